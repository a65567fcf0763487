"""Batched Monte Carlo tree search over a learned model (MuZero's PUCT, mctx's array layout).

`plan` is the entry point; `mcts` holds the pure steps (simulate, expand, backward, qtransform, PUCT), `tree` the
tensor layout, `interface` what a model must provide.
"""

from priorzero.search.interface import RecurrentOutput, RootOutput, SearchModel
from priorzero.search.mcts import SearchParams, run_simulations
from priorzero.search.root import SearchOutput, combine_priors, plan, visit_policy
from priorzero.search.tree import Tree, init_tree

__all__ = [
    "RecurrentOutput",
    "RootOutput",
    "SearchModel",
    "SearchOutput",
    "SearchParams",
    "Tree",
    "combine_priors",
    "init_tree",
    "plan",
    "run_simulations",
    "visit_policy",
]
