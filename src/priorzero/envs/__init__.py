"""Text games behind one protocol (TextWorld and Jericho backends) and a worker pool with timeouts.

    from priorzero.envs import GamePool, make_game
    game = make_game("tw-coin_collector-l5-s1", config.env)      # in this process
    with GamePool(["zork1.z5"] * 4, config.env) as pool: ...     # in worker processes, hang-proof
"""

from priorzero.envs.base import Observation, StepResult, TextGame, make_game
from priorzero.envs.pool import GamePool, PoolStats

__all__ = ["GamePool", "Observation", "PoolStats", "StepResult", "TextGame", "make_game"]
