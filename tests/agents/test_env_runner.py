"""TeamEnvRunner's batched sampling loop against RLlib's own SingleAgentEnvRunner loop, the reference.

Both runners get the same config, env seeds, module weights and torch seed; they must return the same episode
chunks (observations incl. the bootstrap one, actions, rewards, terminated / truncated, every extra model
output, t_started) over several `sample()` calls that cut episodes and cross auto-resets, show `on_sample_end`
callbacks the same infos (the batched runner's returned chunks then carry empty ones), and log the same episode
returns and lengths. Envs: simple_spread (truncation), the memory env (termination) and SMAX 3m
(episodes of different lengths in one vector env, wins).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import torch
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode

from agents.build import build_ppo_config, probe_env
from agents.config import load_config
from agents.env_runner import EPISODE_WIN_RATE, TeamEnvRunner, _segments
from envs import smax

CASES = {
    "spread": (
        "configs/mpe_spread.yaml",
        ["env.options.max_cycles=7", "resources.num_env_runners=0", "resources.num_envs_per_env_runner=4"],
    ),
    "memory": ("configs/memory_orchid.yaml", ["env.options.delay=3", "resources.num_envs_per_env_runner=3"]),
    "smax_3m": ("configs/smax_3m.yaml", ["env.options.max_steps=12", "resources.num_envs_per_env_runner=6"]),
}


def test_segments_are_runs_of_valid_steps() -> None:
    valid = np.array(
        [
            [True, False, True],
            [True, True, True],
            [False, True, True],
            [True, True, False],
        ]
    )
    # env 0 was not resetting at the start; env 1 was (its step 0 is the reset); env 2 ends at step 2
    segs = {(s.env, s.first, s.last, s.continues) for s in _segments(valid)}
    assert segs == {(0, 0, 1, True), (0, 3, 3, False), (1, 1, 3, False), (2, 0, 2, True)}


def _record_infos(*, env_runner: SingleAgentEnvRunner, samples: list[SingleAgentEpisode], **kwargs: Any) -> None:
    """An `on_sample_end` callback: keeps each returned chunk's infos as the callbacks see them, by chunk id."""
    seen = env_runner.__dict__.setdefault("infos_at_sample_end", {})
    for ep in samples:
        seen[id(ep)] = list(ep.get_infos())


def _canonical(ep: SingleAgentEpisode) -> dict[str, Any]:
    obs = ep.get_observations()
    row = {f"obs/{k}": np.asarray(v) for k, v in obs.items()}
    row["actions"] = np.asarray(ep.get_actions())
    row["rewards"] = np.asarray(ep.get_rewards(), dtype=np.float64)
    for key in ep.extra_model_outputs:
        row[f"extra/{key}"] = np.asarray(ep.get_extra_model_outputs(key))
    row["t_started"] = ep.t_started
    row["terminated"], row["truncated"] = ep.is_terminated, ep.is_truncated
    row["infos"] = ep.get_infos()
    return row


def _key(row: dict[str, Any]) -> str:
    digest = hashlib.sha1(str(row["t_started"]).encode())
    for name in sorted(row):
        if name.startswith("obs/") or name == "actions":
            digest.update(np.asarray(row[name], dtype=np.float64).tobytes())
    return digest.hexdigest()


def _assert_same_info(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def _runners(case: str) -> tuple[SingleAgentEnvRunner, TeamEnvRunner]:
    path, overrides = CASES[case]
    config = load_config(path, overrides)
    probe_env(config)
    ppo = build_ppo_config(config).callbacks(on_sample_end=_record_infos)
    reference, batched = SingleAgentEnvRunner(config=ppo), TeamEnvRunner(config=ppo)
    assert batched.module is not None and reference.module is not None
    batched.module.load_state_dict(reference.module.state_dict())
    return reference, batched


def _sample(runner: SingleAgentEnvRunner, explore: bool, calls: int) -> list[dict[str, Any]]:
    """The canonical rows of `calls` sample() calls; "infos" as `on_sample_end` saw them, "returned_infos" as
    the chunks came back."""
    torch.manual_seed(7)
    rows = []
    for _ in range(calls):
        for ep in runner.sample(num_timesteps=50, explore=explore):
            row = _canonical(ep)
            row["returned_infos"], row["infos"] = row["infos"], runner.infos_at_sample_end[id(ep)]
            row["episode"] = ep
            rows.append(row)
    return rows


@pytest.mark.parametrize("explore", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_batched_loop_returns_rllibs_episodes(case: str, explore: bool) -> None:
    if case.startswith("smax") and smax.unavailable_reason() is not None:
        pytest.skip(str(smax.unavailable_reason()))
    reference, batched = _runners(case)
    try:
        expected = _sample(reference, explore, calls=4)
        got = _sample(batched, explore, calls=4)
        got_episodes = [row.pop("episode") for row in got]
        for row in expected:
            assert row.pop("returned_infos") == row["infos"]  # RLlib's loop returns what its callbacks saw
            del row["episode"]
        for row in got:
            assert row.pop("returned_infos") == [{}] * len(row["infos"])  # ours ships none to the learner
        assert len(got) == len(expected)
        assert sum(r["terminated"] or r["truncated"] for r in expected) > 0  # the calls crossed episode ends
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)  # small envs repeat whole episodes
        for r in expected:
            by_key[_key(r)].append(r)
        for row in got:
            ref = by_key[_key(row)].pop()
            assert row.keys() == ref.keys()
            for name in row:
                if name == "infos":
                    assert len(row[name]) == len(ref[name])
                    for a, b in zip(row[name], ref[name], strict=True):
                        _assert_same_info(a, b)
                elif name.startswith("extra/") and row[name].dtype.kind == "f":
                    np.testing.assert_allclose(row[name], ref[name], rtol=0, atol=1e-6, err_msg=name)
                else:
                    np.testing.assert_array_equal(row[name], ref[name], err_msg=name)
        # the chunks of one episode continue each other: same id, t_started = steps already returned
        steps: dict[str, int] = defaultdict(int)
        for ep in got_episodes:
            assert ep.t_started == steps[ep.id_]
            steps[ep.id_] += len(ep)
            ep.validate()
        ref_metrics, got_metrics = reference.get_metrics(), batched.get_metrics()
        for key in ("episode_return_mean", "episode_len_mean", "num_episodes_lifetime", "num_env_steps_sampled"):
            assert float(got_metrics[key]) == pytest.approx(float(ref_metrics[key])), key
        if case.startswith("smax"):
            finals = [r["infos"][-1] for r in expected if r["terminated"] or r["truncated"]]
            assert float(got_metrics[EPISODE_WIN_RATE]) == pytest.approx(np.mean([bool(i["won"]) for i in finals]))
        else:
            assert EPISODE_WIN_RATE not in got_metrics
    finally:
        reference.stop()
        batched.stop()


def test_episode_callbacks_fall_back_to_rllibs_loop() -> None:
    """A config with a per-episode callback gets RLlib's loop (which makes it), not the batched one."""
    from ray.rllib.callbacks.callbacks import RLlibCallback

    seen: list[int] = []

    class CountEnds(RLlibCallback):
        def on_episode_end(self, **kwargs: Any) -> None:
            seen.append(1)

    path, overrides = CASES["spread"]
    config = load_config(path, overrides)
    probe_env(config)
    runner = TeamEnvRunner(config=build_ppo_config(config).callbacks(CountEnds))
    try:
        episodes = runner.sample(num_timesteps=60, explore=True)
        assert len(seen) == sum(ep.is_done for ep in episodes) > 0
        assert runner._open is None
    finally:
        runner.stop()
