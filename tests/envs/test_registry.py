"""The env table: every entry builds a TeamEnv that passes gymnasium's checker; names, options are strict."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

from envs import ENVS, TeamEnv, make_options, make_team_env
from envs.mpe import SpreadOptions
from envs.signal import SignalOptions


def _skip_if_unavailable(name: str) -> None:
    reason = ENVS[name].unavailable()
    if reason is not None:  # e.g. smacv2 without StarCraft II; its adapter is tested against a stand-in
        pytest.skip(reason)


@pytest.mark.parametrize("name", sorted(ENVS))
@pytest.mark.parametrize("use_state", [False, True])
def test_every_entry_passes_env_checker(name: str, use_state: bool) -> None:
    _skip_if_unavailable(name)
    env = make_team_env(name, use_state=use_state)
    assert isinstance(env, TeamEnv)
    with warnings.catch_warnings():
        # Unbounded MPE observations and zero-width padding bounds are intended; they only warn.
        warnings.simplefilter("ignore", UserWarning)
        check_env(env, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("name", sorted(ENVS))
def test_every_raw_env_passes_parallel_api_test(name: str) -> None:
    _skip_if_unavailable(name)
    entry = ENVS[name]
    parallel_api_test(entry.make(entry.options_cls(), None), num_cycles=60)
    assert entry.description


def test_state_is_the_raw_state() -> None:
    env = make_team_env("mpe_spread", use_state=True)
    obs, _ = env.reset(seed=5)
    assert obs["state"].shape == (54,)
    np.testing.assert_array_equal(obs["state"], env.raw_env.state())
    np.testing.assert_array_equal(obs["state"][:18], obs["obs"][0])  # mpe2 state = concatenated observations
    obs, *_ = env.step(np.array([1, 2, 3]))
    np.testing.assert_array_equal(obs["state"], env.raw_env.state())


def test_mpe_spread_time_limit_is_a_truncation_with_live_agents() -> None:
    env = make_team_env("mpe_spread", {"n_agents": 4, "max_cycles": 3})
    assert env.n_agents == 4 and env.obs_dim == 24
    env.reset(seed=0)
    for t in range(3):
        obs, _, terminated, truncated, _ = env.step(np.zeros(4, dtype=np.int64))
        assert not terminated and truncated == (t == 2)
    np.testing.assert_array_equal(obs["alive"], np.ones(4))


def test_render_passes_through() -> None:
    for name in ("mpe_spread", "signal"):
        env = make_team_env(name, render_mode="rgb_array")
        env.reset(seed=0)
        frame = env.render()
        assert isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3
        env.close()


def test_unknown_env_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown env 'foo'; expected one of: mpe_spread, .*signal"):
        make_team_env("foo")


def test_unknown_option_key_lists_valid_keys() -> None:
    with pytest.raises(
        ValueError,
        match=r"unknown option env\.options\.agents for env 'mpe_spread'; "
        r"valid keys: n_agents, local_ratio, max_cycles",
    ):
        make_team_env("mpe_spread", {"agents": 3})


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("mpe_spread", {"n_agents": "3"}, r"env\.options\.n_agents must be int, got '3' of type str"),
        ("mpe_spread", {"n_agents": True}, r"env\.options\.n_agents must be int, got True of type bool"),
        ("mpe_spread", {"local_ratio": "0.5"}, r"env\.options\.local_ratio must be float"),
        ("mpe_reference", {"max_cycles": 2.5}, r"env\.options\.max_cycles must be int"),
        ("signal", {"agent_id": 1}, r"env\.options\.agent_id must be bool"),
    ],
)
def test_wrong_option_type_names_key_and_type(name: str, options: dict[str, object], match: str) -> None:
    with pytest.raises(TypeError, match=match):
        make_team_env(name, options)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("mpe_spread", {"n_agents": 0}, r"env\.options\.n_agents must be >= 1, got 0"),
        ("mpe_spread", {"local_ratio": 1.5}, r"env\.options\.local_ratio must be in \[0, 1\], got 1\.5"),
        ("mpe_reference", {"local_ratio": -0.1}, r"env\.options\.local_ratio must be in \[0, 1\]"),
        ("mpe_speaker_listener", {"max_cycles": 0}, r"env\.options\.max_cycles must be >= 1, got 0"),
        ("signal", {"n_symbols": 1}, r"env\.options\.n_symbols must be >= 2, got 1"),
    ],
)
def test_out_of_range_option_names_key(name: str, options: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_team_env(name, options)


def test_int_is_accepted_for_float_and_stored_as_float() -> None:
    options = make_options("mpe_spread", {"local_ratio": 1})
    assert options == SpreadOptions(local_ratio=1.0)
    assert isinstance(options.local_ratio, float)


def test_options_instances_and_defaults() -> None:
    assert make_options("signal") == SignalOptions()
    given = SignalOptions(n_agents=2)
    assert make_options("signal", given) is given
    with pytest.raises(TypeError, match="options of env 'mpe_spread' must be a mapping or SpreadOptions, got Signal"):
        make_options("mpe_spread", given)
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.n_agents = 3


def test_bad_team_reward_fails_before_the_raw_env_is_built() -> None:
    with pytest.raises(ValueError, match="unknown team_reward 'avg'"):
        make_team_env("signal", team_reward="avg")
