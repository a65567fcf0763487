"""What the search needs from a model: the root's outputs, and one batched step below a tree node.

The search never looks inside `state`: it is the model's handle for one search (for the world model, the root
context's key-value cache plus a slot per tree node), created by the model's `initial_inference`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from torch import Tensor


class RootOutput(NamedTuple):
    value: Tensor  # [B] scalar value of each root
    policy_logits: Tensor  # [B, K] over the root's candidate commands
    state: Any  # the model's handle for this search


class RecurrentOutput(NamedTuple):
    reward: Tensor  # [B] reward of the step into the new node
    value: Tensor  # [B] value of the new node
    policy_logits: Tensor  # [B, K] over the root's candidate commands, at the new node


class SearchModel(Protocol):
    def recurrent_inference(self, state: Any, path: Tensor, action: Tensor, node: Tensor) -> RecurrentOutput:
        """Step every game from its selected leaf's parent by `action`, storing the new node in the slot `node` holds:
        a [1] long tensor on the model's device, the search's node counter, to be read on the device only (a search
        replayed as a CUDA graph, search.mcts:run_simulations_graphed, changes no host value between replays).

        path: [B, D] long, the nodes from depth 1 down to the parent (the root, node 0, is implicit), padded with -1;
        the parent is the last non-negative entry, or the root where there is none. action: [B] long.
        """
        ...
