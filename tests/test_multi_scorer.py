"""Several language-model scorers (gpu.count > 1), on CPU 'devices': the real embedded model started twice by
`start_prior` (llm.device=cpu, gpu.count=2), real game states and real games in worker processes.

Game slot i is scored by scorer i % (live scorers); every scorer scores with the learner's weights after each
language-model update (the second one copies them, the LoRA adapter merged in); a scorer that raises ends only its
games' episodes (truncated, "scorer_failed") and the other one takes its slots. The one stand-in is
`FakeGpuFailure`, a hook that makes the real model's forward pass fail as on a GPU that fell off the bus.
"""

import pytest
import torch

from priorzero.config import EnvConfig, build_config
from priorzero.envs import GamePool
from priorzero.envs.base import Observation
from priorzero.llm import startup
from priorzero.llm.prior import SCORER_FAILED, PriorInput, ScorerFailed
from priorzero.llm.quality import walkthrough_states
from priorzero.train.agents import GameState, LLMAgent
from priorzero.train.buffer import StepRecord
from priorzero.train.episodes import EpisodeLoop, PoolGames
from priorzero.train.lm_learner import LMLearner

GAME = "tw-coin_collector-l5-s1"
OTHER_GAME = "tw-treasure_hunter-l1-s1"
OVERRIDES = ["gpu.count=2", "llm.history_steps=1", "llm.prompt_tokens=256", "train.lm_lr=0.05", "train.lm_batch_size=2", "train.lm_micro_batch=2"]


class FakeGpuFailure:
    """A forward pre-hook standing in for a GPU that failed: the real model's next forward pass raises CUDA's error."""

    def __call__(self, module, args):
        raise RuntimeError("CUDA error: unspecified launch failure")


def fail(scorer) -> None:
    scorer.lm.model.get_input_embeddings().register_forward_pre_hook(FakeGpuFailure())


@pytest.fixture
def two():
    """A prior with two scorers on the CPU, as a run with --device cpu --gpus 2 starts it."""
    config = build_config(preset="quick", overrides=OVERRIDES)
    return config, startup.start_prior(config)


@pytest.fixture(scope="module")
def states(default_game_file) -> list[GameState]:
    """Four states along the default game's walkthrough, in slots 0..3."""
    found, _ = walkthrough_states(GAME, EnvConfig(), max_states=4)
    assert len(found) == 4
    return [
        GameState(Observation(s.observation, list(s.valid_commands), 0.0, None, 0), list(s.history), s.opening or s.observation, slot=i)
        for i, s in enumerate(found)
    ]


def test_two_scorers_start_one_trains_and_the_report_lists_both(two):
    config, started = two
    prior = started.prior
    first, second = prior.scorers
    assert prior.backend is first and prior.trainable is first.lm and not first.replica
    assert second.replica and second.lm is not first.lm and second.lm.model is not first.lm.model
    report = started.report
    assert report["gpu_count"] == 2 and [s["device"] for s in report["scorers"]] == ["cpu", "cpu"]
    assert [s["trains"] for s in report["scorers"]] == [True, False] and "scorer 2 of 2" in report["scorers"][1]["reason"]
    assert "2 scorers, on cpu, cpu" in startup.describe(report)


def test_slots_split_between_the_scorers_and_both_take_every_update(two, states):
    config, started = two
    prior = started.prior
    first, second = prior.scorers
    inputs = [PriorInput(s.observation.text, s.commands, s.history, s.opening) for s in states]
    alone = first.prior(inputs)  # the first scorer on all four
    scored_before = (first.stats.priors, second.stats.priors)
    prompts, split = prior.priors(states)
    assert (first.stats.priors - scored_before[0], second.stats.priors - scored_before[1]) == (2, 2)  # slots 0, 2 and 1, 3
    for a, b in zip(alone, split):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)

    learner = LMLearner(prior, config.train)  # wraps the trainable model and the replica with LoRA alike
    records = [
        StepRecord(s.observation.text, list(s.commands), p, [1.0 / len(s.commands)] * len(s.commands), 0.0,
                   [0] * (len(s.commands) - 1) + [8], len(s.commands) - 1, 1.0, False, 0, value_target=float(i))
        for i, (s, p) in enumerate(zip(states[:2], prompts[:2]))
    ]  # fmt: skip
    assert learner.step(records)["loss"] > 0
    assert prior.version == 1 and first.version == 1 and second.version == 1
    trained = first.prior(inputs[:2])  # scored by the learner's own model, adapter and all
    replica = second.prior(inputs[:2])
    assert max((a - b).abs().max().item() for a, b in zip(alone, trained)) > 1e-3  # the update moved the prior
    for a, b in zip(trained, replica):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    _, after = prior.priors(states[:2])  # the cache was cleared by the new version: slot 0 by one, slot 1 by the other
    for a, b in zip(trained, after):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_a_failing_scorer_truncates_only_its_games_and_the_other_takes_its_slots(two, caplog):
    _, started = two
    prior = started.prior
    fail(prior.scorers[1])
    games = PoolGames(GamePool([GAME, OTHER_GAME], EnvConfig(max_episode_steps=3)))
    try:
        loop = EpisodeLoop(games, LLMAgent(prior))
        assert loop.start([(0, 0, 1), (1, 1, 2)]) == []
        caplog.set_level("ERROR")
        ended = loop.step()
        assert [(e.slot, r.truncated_reason, r.steps) for e, r in ended] == [(1, SCORER_FAILED, 0)]
        assert loop.running == [0] and loop.steps == 1  # slot 0 was decided and stepped
        assert prior.live == [0] and prior.failures == 1
        assert any("scorer 1" in r.message and "CUDA error: unspecified launch failure" in r.message for r in caplog.records)
        loop.start([(1, 2, 3)])  # the slot's next episode is scored by the scorer left
        loop.step()
        assert loop.running == [0, 1] and loop.steps == 3
        prior.weights_updated()  # only the live scorer takes new weights
        assert prior.scorers[0].version == 1 and prior.scorers[1].version == 0
    finally:
        games.close()
    fail(prior.scorers[0])  # the last scorer's error is the run's error, as with one scorer
    with pytest.raises(RuntimeError, match="unspecified launch failure"):
        prior.priors([GameState(Observation("a room", ["north", "south"], 0.0, None, 0), slot=1)])


def test_outside_episodes_the_states_of_a_failed_scorer_are_scored_by_the_others(two, states):
    _, started = two
    prior = started.prior
    fail(prior.scorers[0])  # the trainable one's scoring fails; the replica's does not
    loose = [GameState(s.observation, s.history, s.first_text) for s in states[:3]]  # no slots: by position
    with pytest.raises(ScorerFailed) as failed:
        prior.priors(loose)
    assert failed.value.positions == [0, 2] and failed.value.reason == SCORER_FAILED
    _, priors = prior.priors_retrying(loose)
    assert len(priors) == 3 and prior.live == [1]


@pytest.mark.slow
def test_a_run_goes_on_when_a_scorer_fails_and_says_so(tmp_path, monkeypatch, default_game_file):
    """A real run of two iterations on two game slots; the second scorer's 'GPU' fails once the first iteration is done."""
    import json

    from priorzero.train import loop

    real_iteration = loop.iteration

    def iteration_then_a_gpu_fails(trainer, stop, progress):
        metrics = real_iteration(trainer, stop, progress)
        if trainer.counters.iteration == 1:
            fail(trainer.prior.scorers[1])
        return metrics

    monkeypatch.setattr(loop, "iteration", iteration_then_a_gpu_fails)
    tiny = ["env.num_envs=2", "env.max_episode_steps=4", "search.num_simulations=4", "train.iteration_steps=6", "train.max_iter=2",
            "train.wm_updates_per_step=0.5", "train.wm_batch_size=4", "train.lm_updates_per_step=0.25", "train.eval_episodes=1",
            "train.eval_agents=[random]"]  # fmt: skip
    config = build_config(preset="quick", overrides=OVERRIDES + tiny)
    run = tmp_path / "run"
    assert loop.run_training(config, run_dir=run) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    per_iteration = [(r["lm/scorers_live"], r["lm/scorer_failures"]) for r in rows if "lm/scorers_live" in r]
    assert per_iteration == [(2.0, 0.0), (1.0, 1.0)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["counters"]["scorer_failures"] == 1 and summary["counters"]["env_steps"] == 12
    log = (run / "train.log").read_text()
    assert "scorer 1 (hf on cpu) raised RuntimeError: CUDA error: unspecified launch failure" in log and "1 scorer(s) go on" in log
    assert [s["trains"] for s in json.loads((run / "startup.json").read_text())["scorers"]] == [True, False]
