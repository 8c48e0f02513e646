"""TeamPPOBatch (agents/team_batch.py) against RLlib's own PPO learner pipeline, and its GAE against a hand loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ray.rllib.connectors.learner import AddOneTsToEpisodesAndTruncate, GeneralAdvantageEstimation
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.evaluation.postprocessing import Postprocessing

from agents.build import build_ppo_config, probe_env
from agents.config import load_config
from agents.rl_module import GATE_OPEN
from agents.team_batch import PROX_GATE_LOGITS, PROX_LOGITS, TeamPPOBatch, gae
from envs import smax

ADV, TARGETS = Postprocessing.ADVANTAGES, Postprocessing.VALUE_TARGETS


def test_gae_of_concatenated_chunks_matches_a_loop_per_chunk():
    rng = np.random.default_rng(0)
    lengths = np.array([1, 5, 3, 7, 2])
    deltas = rng.normal(size=lengths.sum())
    expected, start = [], 0
    for n in lengths:  # A_t = delta_t + 0.99 * 0.9 * A_t+1, restarting at 0 after every chunk's last step
        running, chunk = 0.0, []
        for delta in deltas[start : start + n][::-1]:
            running = delta + 0.99 * 0.9 * running
            chunk.append(running)
        expected += chunk[::-1]
        start += n
    assert np.allclose(gae(deltas, lengths, 0.99, 0.9), expected)


def _reference(algo, episodes: list[SingleAgentEpisode]) -> dict:
    """RLlib's default PPO learner pipeline on `episodes`, then only the rows its loss mask counts, with the
    advantages standardised over them (what the learner trained on before TeamPPOBatch)."""
    config = algo.config
    pipeline = config.build_learner_connector(input_observation_space=None, input_action_space=None, device="cpu")
    pipeline.prepend(AddOneTsToEpisodesAndTruncate())
    pipeline.append(GeneralAdvantageEstimation(gamma=config.gamma, lambda_=config.lambda_))
    module = algo.learner_group._learner.module
    batch = pipeline(rl_module=module, batch={}, episodes=episodes, explore=False, shared_data={}, metrics=None)
    columns = batch[DEFAULT_MODULE_ID]
    keep = columns.pop(Columns.LOSS_MASK).bool()
    kept = {}
    for name, column in columns.items():
        if isinstance(column, dict):
            kept[name] = {key: value[keep] for key, value in column.items()}
        else:
            kept[name] = column[keep]
    kept[ADV] = (kept[ADV] - kept[ADV].mean()) / kept[ADV].std()
    return kept


def _compare(config_path: str, overrides: list[str], iterations: int) -> set[str]:
    config = load_config(config_path, overrides)
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        episodes = []
        for _ in range(iterations):
            episodes += algo.env_runner.sample()
        learner = algo.learner_group._learner
        ours = TeamPPOBatch(gamma=algo.config.gamma, lambda_=algo.config.lambda_)
        got = ours(rl_module=learner.module, batch={}, episodes=episodes)[DEFAULT_MODULE_ID]
        expected = _reference(algo, copy.deepcopy(episodes))
    finally:
        algo.stop()
    assert set(got) == set(expected)
    for name, column in expected.items():
        if isinstance(column, dict):
            assert set(got[name]) == set(column)
            for key, value in column.items():
                assert torch.equal(got[name][key], value), f"{name}/{key}"
        elif column.dtype.is_floating_point:
            assert got[name].dtype == column.dtype, name
            assert torch.allclose(got[name], column, atol=1e-5, rtol=1e-5), name
        else:
            assert torch.equal(got[name], column.to(got[name].dtype)), name
    finished = {"terminated" if ep.is_terminated else "truncated" if ep.is_truncated else "cut" for ep in episodes}
    return finished


@pytest.mark.usefixtures("ray_session")
def test_the_batch_equals_rllibs_pipeline_on_signal_episodes():
    # Episodes that end by truncation and chunks cut by the rollout, several per env.
    kinds = _compare("configs/signal.yaml", ["training.train_batch_size=300", "training.minibatch_size=100"], 2)
    assert {"truncated", "cut"} <= kinds


@pytest.mark.skipif(smax.unavailable_reason() is not None, reason=str(smax.unavailable_reason()))
@pytest.mark.usefixtures("ray_session")
def test_the_batch_equals_rllibs_pipeline_on_smax_battles():
    # Battles won or lost (terminated), time-outs and cut chunks; observations with the global state.
    overrides = ["resources.num_envs_per_env_runner=8", "training.train_batch_size=800", "training.minibatch_size=400"]
    overrides += ["resources.num_env_runners=0", "training.sample_ahead=false"]  # sampled here, in the driver
    kinds = _compare("configs/smax_3m.yaml", overrides, 2)
    assert {"terminated", "cut"} <= kinds


@pytest.mark.usefixtures("ray_session")
def test_the_proximal_logits_are_the_policy_on_the_batch_rows():
    config = load_config("configs/signal.yaml", ["training.train_batch_size=300", "training.minibatch_size=100"])
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        episodes = algo.env_runner.sample()
        module = algo.learner_group._learner.module
        plain = TeamPPOBatch(gamma=0.99, lambda_=0.95)(rl_module=module, batch={}, episodes=episodes)
        prox = TeamPPOBatch(gamma=0.99, lambda_=0.95, proximal=True)(rl_module=module, batch={}, episodes=episodes)
        plain, prox = plain[DEFAULT_MODULE_ID], prox[DEFAULT_MODULE_ID]
        with torch.no_grad():
            # The proximal policy acts with the gate decisions the EnvRunner sampled and recorded.
            expected = module[DEFAULT_MODULE_ID].policy_output(
                {Columns.OBS: plain[Columns.OBS]}, gate_open=plain[GATE_OPEN]
            )
    finally:
        algo.stop()
    assert 0.0 < float(plain[GATE_OPEN].mean()) < 1.0  # sampled decisions, some closed (init p = 0.88)
    assert torch.allclose(prox.pop(PROX_LOGITS), expected.logits.flatten(-2), atol=1e-6)
    assert expected.gate_logit is not None
    assert torch.allclose(prox.pop(PROX_GATE_LOGITS), expected.gate_logit, atol=1e-6)
    # The values (hence the targets) do not depend on the recorded gates: the critic reads the greedy ones. Equal to
    # rounding only: with one block the critic reruns single receivers (CommBlock.receiver_rows), whose products
    # have other shapes than the team pass's.
    assert set(prox) == set(plain)
    torch.testing.assert_close(prox[TARGETS], plain[TARGETS], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("finalized", [False, True])
def test_rows_read_what_the_episode_getters_return(finalized):
    """`_rows` reads a chunk's columns from its buffers without `get()`; with a lookback (RLlib's own runner
    keeps one on cut chunks) and before / after `to_numpy()`, it returns what the getters return."""
    from agents.team_batch import _rows

    rng = np.random.default_rng(0)
    steps, lookback = 5, 2
    obs = [{"obs": rng.normal(size=(3, 4)), "alive": np.ones(3)} for _ in range(lookback + steps + 1)]
    episode = SingleAgentEpisode(
        observations=obs,
        actions=[rng.integers(0, 5, size=3) for _ in range(lookback + steps)],
        rewards=list(rng.normal(size=lookback + steps)),
        extra_model_outputs={"logp": list(rng.normal(size=lookback + steps))},
        len_lookback_buffer=lookback,
    )
    if finalized:
        episode.to_numpy()
    got, want = _rows(episode.observations), episode.get_observations(slice(0, None))
    for key in ("obs", "alive"):
        np.testing.assert_array_equal(
            np.asarray(got[key]) if finalized else np.stack([o[key] for o in got]),
            np.asarray(want[key]) if finalized else np.stack([o[key] for o in want]),
        )
    np.testing.assert_array_equal(np.asarray(_rows(episode.rewards)), np.asarray(episode.get_rewards()))
    np.testing.assert_array_equal(np.asarray(_rows(episode.actions)), np.asarray(episode.get_actions()))
    np.testing.assert_array_equal(
        np.asarray(_rows(episode.extra_model_outputs["logp"])), np.asarray(episode.get_extra_model_outputs("logp"))
    )
    assert len(_rows(episode.rewards)) == steps
