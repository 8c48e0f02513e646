"""`training.sample_ahead` (agents/algorithm.py): the remote EnvRunner samples the next batch during the update.

A real local Ray with one remote EnvRunner and the driver's Learner, on the signal env. The weights version
of every trained batch is read from its episodes (RLlib's WEIGHTS_SEQ_NO column, written by the EnvRunner) and
compared with the Learner's own version at the time of the update: an independent account of the policy lag.
"""

from __future__ import annotations

import pytest
import torch
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

import agents.learner
from agents.build import build_ppo_config, probe_env
from agents.config import load_config

BASE = [
    "training.train_batch_size=256",
    "training.minibatch_size=128",
    "training.num_epochs=2",
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=4",
    "resources.num_env_runners=1",
]


def _build(sample_ahead: bool):
    config = load_config("configs/signal.yaml", [*BASE, f"training.sample_ahead={str(sample_ahead).lower()}"])
    probe_env(config)
    return build_ppo_config(config).build_algo()


def _record_versions(algo) -> list[tuple[int, set[int]]]:
    """(the Learner's weights version, the versions the batch's episodes were sampled with) at every update."""
    learner, group = algo.learner_group._learner, algo.learner_group
    seen: list[tuple[int, set[int]]] = []
    real_update = group.update

    def update(*, episodes, **kwargs):
        versions = {int(v) for episode in episodes for v in episode.get_extra_model_outputs(WEIGHTS_SEQ_NO)}
        seen.append((learner._weights_seq_no, versions))
        return real_update(episodes=episodes, **kwargs)

    group.update = update
    return seen


@pytest.mark.parametrize("sample_ahead", [False, True])
def test_each_batch_comes_from_the_weights_one_update_back(ray_session, sample_ahead):
    algo = _build(sample_ahead)
    try:
        seen = _record_versions(algo)
        results = [algo.train() for _ in range(4)]
    finally:
        algo.stop()
    lags = [version - min(versions) for version, versions in seen]
    assert all(len(versions) == 1 for _, versions in seen)  # one weights version per batch
    if sample_ahead:
        assert lags == [0, 1, 1, 1]  # the first batch was sampled before any update
        assert [r["policy_lag"] for r in results] == lags
    else:
        assert lags == [0, 0, 0, 0] and "policy_lag" not in results[-1]
    sampled = [r["env_runners"]["num_env_steps_sampled_lifetime"] for r in results]
    assert all(b - a >= 256 for a, b in zip([0, *sampled], sampled, strict=False))


def test_the_update_clips_around_the_weights_it_starts_from(ray_session, monkeypatch):
    """Decoupled PPO: at the first gradient step of every update the policy equals the proximal one exactly
    (ratio 1), while the behaviour logits of a lagged batch differ from it."""
    first_steps: list[tuple[float, float]] = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        assert prox_logits is not None
        valid = weight.bool()
        first_steps.append(
            (float((logits - prox_logits).abs()[valid].max()), float((old_logits - prox_logits).abs()[valid].max()))
        )
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    algo = _build(True)
    try:
        for _ in range(3):
            algo.train()
    finally:
        algo.stop()
    per_update = first_steps[::4]  # 2 epochs x 2 minibatches per update
    assert len(first_steps) == 12
    assert all(diff < 1e-5 for diff, _ in per_update)
    assert per_update[0][1] < 1e-5  # the first batch: behaviour = proximal (no update yet)
    assert per_update[1][1] > 1e-3 and per_update[2][1] > 1e-3  # later batches were sampled one update back


def test_a_checkpoint_restores_and_training_goes_on(ray_session, tmp_path):
    algo = _build(True)
    try:
        for _ in range(2):
            before = algo.train()
        algo.save_to_path(str(tmp_path / "ckpt"))
        weights = {k: v.clone() for k, v in algo.learner_group._learner.module["default_policy"].state_dict().items()}
    finally:
        algo.stop()
    restored = _build(True)
    try:
        restored.restore_from_path(str(tmp_path / "ckpt"))
        module = restored.learner_group._learner.module["default_policy"]
        assert [k for k, v in module.state_dict().items() if not torch.equal(weights[k], v)] == []
        after = restored.train()
    finally:
        restored.stop()
    steps = "num_env_steps_sampled_lifetime"
    assert after["env_runners"][steps] >= before["env_runners"][steps] + 256
    assert after["policy_lag"] == 0  # the batch in flight at the save was dropped; the first one is fresh


@pytest.mark.parametrize("sample_ahead", [False, True])
def test_no_call_waits_on_the_sample_in_flight(ray_session, sample_ahead):
    """With sample-ahead an iteration makes no blocking call to the EnvRunner (one would wait out the sample in
    flight): the connector states ride on the sample, and the weights, those states and the sampled-steps
    counter go out in one asynchronous message. RLlib's own step makes the blocking gather (the control)."""
    from ray.rllib.env.env_runner_group import EnvRunnerGroup

    algo = _build(sample_ahead)
    blocking: list[int] = []
    real = EnvRunnerGroup.foreach_env_runner

    def recording(self, *args, **kwargs):
        blocking.append(1)
        return real(self, *args, **kwargs)

    try:
        algo.train()
        EnvRunnerGroup.foreach_env_runner = recording
        try:
            results = [algo.train() for _ in range(3)]
        finally:
            EnvRunnerGroup.foreach_env_runner = real
    finally:
        algo.stop()
    assert (len(blocking) == 0) == sample_ahead
    if sample_ahead:  # and the weights still arrive, one update back (as in the first test of this file)
        assert [r["policy_lag"] for r in results] == [1, 1, 1]


def test_what_setup_built_is_out_of_the_collectors_reach(ray_session):
    """The driver and the EnvRunner freeze the objects of their set-up (`gc.freeze`), so the periodic full
    garbage collection no longer walks them (~0.25 s every ~20 SMAX iterations before); garbage that already
    exists is collected first, not frozen."""
    import gc
    import weakref

    class Cycle:
        pass

    garbage = Cycle()
    garbage.me = garbage  # type: ignore[attr-defined]
    dead = weakref.ref(garbage)
    del garbage
    gc.unfreeze()  # an earlier test's algorithm in this process may have frozen its own set-up
    gc.disable()  # only the set-up's own collection may reclaim the cycle
    try:
        algo = _build(sample_ahead=True)
    finally:
        gc.enable()
    assert dead() is None  # collected before the freeze, not frozen with the set-up
    try:
        driver_frozen = gc.get_freeze_count()
        runner_frozen = algo.env_runner_group.foreach_env_runner(
            lambda runner: __import__("gc").get_freeze_count(), local_env_runner=False
        )
    finally:
        algo.stop()
    assert driver_frozen > 10_000 and runner_frozen[0] > 10_000
