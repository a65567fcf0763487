"""The language-model learner with the real embedded model on real prompts from the default TextWorld game:
the losses move the prior toward the search's visits, and the out-of-memory retry (made real by a memory budget
smaller than the first micro-batch needs) halves the micro-batch and gives the same update."""

import logging

import pytest
import torch

from priorzero.config import build_config
from priorzero.envs.base import make_game
from priorzero.llm.backends.hf import HFPrior
from priorzero.llm.prior import PriorModel
from priorzero.train.agents import GameState
from priorzero.train.buffer import StepRecord
from priorzero.train.lm_learner import LMLearner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def config():
    return build_config("quick", overrides=["llm.history_steps=2", "train.kl_loss_weight=0.1"])


@pytest.fixture(scope="module")
def backend(config):
    return HFPrior.from_config(config.llm)


@pytest.fixture(scope="module")
def records(config, backend) -> list[StepRecord]:
    """Four steps of the default game, two early (short prompts) then two with history (longer prompts)."""
    game = make_game(config.env.env_id, config.env)
    try:
        walkthrough = game.walkthrough()
        state = GameState(game.reset(0))
        prior = PriorModel.of(backend)
        out = []
        for command in walkthrough[:4]:
            prompts, priors = prior.priors([state])
            action = state.commands.index(command)
            visits = [1] * len(state.commands)
            visits[action] = 10
            step = game.step(command)
            out.append(StepRecord(state.observation.text, list(state.commands), prompts[0], priors[0].tolist(), 0.0, visits, action, step.reward, False, 0, value_target=float(step.reward)))
            state.history.append((command, step.observation.text))
            state.observation = step.observation
        return sorted(out, key=lambda r: len(r.prompt_ids))
    finally:
        game.close()


def fresh_learner(config, **train) -> LMLearner:
    """A learner around a freshly loaded model (wrapping it in LoRA changes the model in place)."""
    backend = HFPrior.from_config(config.llm)
    torch.manual_seed(0)  # the LoRA adapter's initialisation
    return LMLearner(PriorModel.of(backend), config.train.model_copy(update=train))


def adapter(learner: LMLearner) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in learner.state_dict()["weights"].items()}


def visit_cross_entropy(learner, records) -> float:
    """Mean cross-entropy from each record's visit distribution to the current prior over its commands."""
    with torch.no_grad():
        log_priors = learner.prior.log_priors_with_grad([r.prompt_ids for r in records], [r.commands for r in records])
    targets = [torch.tensor(r.visit_counts, dtype=torch.float32) / sum(r.visit_counts) for r in records]
    return float(sum(-(t * lp).sum() for t, lp in zip(targets, log_priors)) / len(records))


def test_updates_move_the_prior_toward_the_visits(config, records):
    learner = fresh_learner(config, lm_lr=1e-3, pg_loss_weight=0.0)
    before = visit_cross_entropy(learner, records)
    for _ in range(3):
        metrics = learner.step(records)
    assert visit_cross_entropy(learner, records) < before - 0.05
    assert metrics["kl"] > 0 and learner.prior.version == 3


def test_losses_are_the_means_of_each_steps_losses(config, records):
    """The learner computes its losses over all steps at once; they must be the mean over steps of each step's
    cross-entropy from the visits, policy-gradient term and KL from the initial model, computed one by one here."""
    import dataclasses

    from priorzero.train.lm_learner import LMExample, normalised_advantages

    varied = [dataclasses.replace(r, value_target=0.7 * i - 1.0) for i, r in enumerate(records)]  # advantages not all 0
    learner = fresh_learner(config, pg_loss_weight=0.5, kl_loss_weight=0.1)
    learner.step(varied)  # away from the initial weights, so that the KL is not 0
    examples = [LMExample(r, a) for r, a in zip(varied, normalised_advantages(varied, learner.config.advantage_clip))]
    with torch.no_grad():
        prompts, commands = [r.prompt_ids for r in varied], [r.commands for r in varied]
        current = learner.prior.log_priors_with_grad(prompts, commands)
        with learner._initial_model():
            initial = learner.prior.log_priors_with_grad(prompts, commands)
    expected = {"visit_ce": 0.0, "pg": 0.0, "kl": 0.0}
    for example, log_p, log_p0 in zip(examples, current, initial):
        target = torch.tensor(example.record.visit_policy())
        expected["visit_ce"] += float(-(target * log_p).sum()) / len(examples)
        expected["pg"] += float(-example.advantage * log_p[example.record.action]) / len(examples)
        expected["kl"] += float((log_p.exp() * (log_p - log_p0)).sum()) / len(examples)
    metrics = learner._backward(examples, 1.0)
    assert expected["pg"] != 0 and expected["kl"] > 0
    for name, value in expected.items():
        assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    weighted = learner.config.visit_loss_weight * expected["visit_ce"] + 0.5 * expected["pg"] + 0.1 * expected["kl"]
    assert metrics["loss"] == pytest.approx(weighted, rel=1e-4, abs=1e-6)


def test_policy_target_chooses_what_the_prior_distils(config, records):
    """train.policy_target=completed_q trains toward each record's completed-Q policy, not its visits."""
    import dataclasses

    flipped = []
    for r in records:  # a completed-Q policy that disagrees with the visits: all its mass on the least visited command
        target = [0.0] * len(r.commands)
        target[min(range(len(r.commands)), key=lambda a: (r.visit_counts[a], -a))] = 1.0
        flipped.append(dataclasses.replace(r, policy_target=target))
    assert flipped[0].search_policy("visits") == flipped[0].visit_policy() and flipped[0].search_policy("completed_q") == flipped[0].policy_target

    def target_ce(learner) -> float:
        with torch.no_grad():
            log_priors = learner.prior.log_priors_with_grad([r.prompt_ids for r in flipped], [r.commands for r in flipped])
        return float(sum(-(torch.tensor(r.policy_target) * lp).sum() for r, lp in zip(flipped, log_priors)) / len(flipped))

    learner = fresh_learner(config, lm_lr=1e-3, pg_loss_weight=0.0, policy_target="completed_q")
    before = target_ce(learner)
    for _ in range(3):
        learner.step(flipped)
    assert target_ce(learner) < before - 0.05


def test_out_of_memory_halves_the_micro_batch_and_gives_the_same_update(config, records, caplog):
    reference = fresh_learner(config, lm_micro_batch=1)
    reference.step(records)
    expected = adapter(reference)
    one_step = max(reference._planned_bytes([r_]) for r_ in _examples(reference, records))
    two_large = reference._planned_bytes(_examples(reference, records)[2:])
    assert one_step < two_large

    # The first micro-batch (the two short prompts) fits, the second does not: its gradients must be dropped.
    budget = (one_step + two_large) // 2
    learner = fresh_learner(config, lm_micro_batch=2, lm_memory_budget=str(budget))
    assert learner._planned_bytes(_examples(learner, records)[:2]) <= budget
    with caplog.at_level(logging.WARNING, logger="priorzero.train.microbatch"):
        metrics = learner.step(records)
    assert learner.micro_batch == 1 and learner.oom_retries == 1 and metrics["micro_batch"] == 1
    assert "out of memory with micro-batch 2" in caplog.text and "halving to 1" in caplog.text
    for name, value in adapter(learner).items():
        assert torch.allclose(value, expected[name], atol=1e-6), name


def _examples(learner, records):
    from priorzero.train.lm_learner import LMExample

    return [LMExample(r, 0.0) for r in records]


def test_prior_cache_reuses_scores_until_the_weights_change(config, records):
    learner = fresh_learner(config, lm_lr=1e-3, pg_loss_weight=0.0)
    prior = learner.prior
    game = make_game(config.env.env_id, config.env)
    try:
        state = GameState(game.reset(0))
    finally:
        game.close()
    calls = []
    score = prior.backend.prior_from_prepared
    prior.backend.prior_from_prepared = lambda prepared: calls.append(len(prepared)) or score(prepared)
    _, first = prior.priors([state, state])
    _, again = prior.priors([state])
    assert calls == [1] and prior.cache_hits == 2 and prior.cache_lookups == 3  # one scoring for three lookups
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[0])
    learner.step(records)  # new weights: the cached prior is stale
    _, updated = prior.priors([state])
    assert calls == [1, 1] and not torch.equal(updated[0], first[0])


def test_deferred_learner_publishes_to_its_replica_only_when_asked(config, records):
    """Learning beside collection: the scorer is a model of its own (a replica), the learner trains another copy.
    An update leaves the scorer's weights and version as they were until `publish()`; then the replica scores
    exactly what the trained model scores (its adapter's parameters copied by name, nothing merged)."""
    from priorzero.llm.loading import load_language_model

    scorer = HFPrior.from_config(config.llm)
    scorer.replica = True
    prior = PriorModel(scorer, load_language_model(config.llm), scorer.token_budget)
    torch.manual_seed(0)
    learner = LMLearner(prior, config.train, deferred=True)
    assert prior.scorers[0].lm.model is not prior.trainable.model
    states = [(r.prompt_ids, r.commands) for r in records]

    def scored() -> list[torch.Tensor]:
        from priorzero.llm.prior import PreparedState

        return scorer.prior_from_prepared([PreparedState(p, prior.candidate_ids(c), 0) for p, c in states])

    def trained() -> list[torch.Tensor]:
        with torch.no_grad():
            return [lp.exp().float().cpu() for lp in prior.log_priors_with_grad([p for p, _ in states], [c for _, c in states])]

    before = scored()
    for a, b in zip(before, trained()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # the replica starts with the learner's initial adapter
    trained_weights = {k: v.clone() for k, v in prior.trainable.model.state_dict().items()}
    learner.step(records)
    learner.step(records)
    assert learner.updates == 2 and prior.version == 0 and scorer.version == 0  # not published yet
    for a, b in zip(before, scored()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # the scorer still holds the initial weights
    learner.publish()
    assert prior.version == 2 and scorer.version == 2
    after = scored()
    assert max((a - b).abs().max().item() for a, b in zip(before, after)) > 1e-3  # the updates reached the scorer
    for a, b in zip(after, trained()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    base = {k: v for k, v in prior.trainable.model.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(v, trained_weights[k]) for k, v in base.items())  # publishing never touched the base weights
    assert learner.state_dict()["version"] == 2
