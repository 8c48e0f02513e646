"""The env table: every entry builds a TeamEnv that passes gymnasium's checks; names, options are strict.

`check_team_env` is gymnasium's `check_env(env, skip_render_check=True)` taken apart (gymnasium 1.2,
gymnasium/utils/env_checker.py) and run piece by piece, with one change and one addition:

- `check_step_determinism` draws its action from `env.action_space` *before* its seeded reset, so from the mask
  of whatever state the env was left in. On an env whose masks depend on the reset seed (SMAX smacv2_5_units:
  random start positions put enemies in range or not; smacv2: units dead at the start) the action may be masked
  after the reset, and `TeamEnv` rightly refuses it. We reset with the check's seed just before calling it, so
  `TeamActionSpace.sample()` draws from the mask of the very state the check steps from. On an env whose masks
  do not depend on the seed this is the same draw as gymnasium's.
- gymnasium compares the observations of two resets with the same seed only for an env with a `spec`; the table
  builds its envs without one, so we compare them here.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import (
    check_env,
    check_reset_options,
    check_reset_return_info_deprecation,
    check_reset_return_type,
    check_reset_seed_determinism,
    check_seed_deprecation,
    check_space_limit,
    check_step_determinism,
    data_equivalence,
)
from gymnasium.utils.passive_env_checker import (
    check_action_space,
    check_observation_space,
    env_reset_passive_checker,
    env_step_passive_checker,
)
from pettingzoo import ParallelEnv
from pettingzoo.test import parallel_api_test

from envs import ENVS, TeamEnv, make_options, make_team_env
from envs.mpe import SpreadOptions
from envs.signal import SignalOptions

CHECK_SEED = 123
"""The seed of gymnasium's own determinism checks."""


def check_team_env(env: gymnasium.Env[Any, Any], seed: int = CHECK_SEED) -> None:
    """gymnasium's `check_env(env, skip_render_check=True)` with masked-valid determinism actions (module doc).

    Raises:
        AssertionError (or gymnasium's own errors): the first check that fails.
    """
    assert isinstance(env, gymnasium.Env), f"{env!r} is not a gymnasium.Env"
    assert env.unwrapped is env, f"check the unwrapped env, not {env!r}"
    # check_env would convert jax / torch envs to numpy first; ours hand out numpy already.
    assert not env.metadata.get("jax", False) and not env.metadata.get("torch", False)
    # check_env's close check and its render checks of other modes rebuild the env from `env.spec`.
    assert env.spec is None, "an env with a spec: run gymnasium's check_env itself"

    check_action_space(env.action_space)
    check_space_limit(env.action_space, "action")
    check_observation_space(env.observation_space)
    check_space_limit(env.observation_space, "observation")

    check_seed_deprecation(env)
    check_reset_return_info_deprecation(env)
    check_reset_return_type(env)
    check_reset_seed_determinism(env)
    check_reset_options(env)
    first, _ = env.reset(seed=seed)
    second, _ = env.reset(seed=seed)
    assert data_equivalence(first, second, exact=True), f"env.reset(seed={seed}) twice gave different observations"

    env_reset_passive_checker(env)
    env_step_passive_checker(env, env.action_space.sample())  # drawn from the mask of the reset just above

    env.reset(seed=seed)  # so that the check's action is drawn from the mask of the state it steps from
    check_step_determinism(env, seed=seed)


class SeededMaskEnv(ParallelEnv):
    """One agent with 4 actions; a reset with seed s leaves only action s % 4 available, an unseeded one only 0.

    The smallest env whose mask depends on the reset seed: gymnasium's `check_env` draws its determinism action
    from the unseeded state's mask ({0}) and then steps it after `reset(seed=123)` (mask {3}). With `noisy`, the
    reward carries unseeded noise, so a sound step-determinism check must fail.
    """

    metadata: ClassVar[dict[str, Any]] = {"name": "seeded_mask", "render_modes": []}

    def __init__(self, noisy: bool = False) -> None:
        self.possible_agents = ["a"]
        self.agents: list[str] = []
        self.noisy = noisy
        self._mask = np.zeros(4, dtype=np.int8)

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        return spaces.Box(0.0, 3.0, shape=(1,), dtype=np.float32)

    def action_space(self, agent: str) -> spaces.Space[Any]:
        return spaces.Discrete(4)

    def _out(self, value: float) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        obs = {"a": np.full(1, value, dtype=np.float32)}
        return obs, {"a": {"action_mask": self._mask.copy()}}

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        self.agents = ["a"]
        self._mask[:] = 0
        available = 0 if seed is None else seed % 4
        self._mask[available] = 1
        return self._out(available)

    def step(self, actions: dict[str, int]) -> tuple[Any, ...]:
        act = int(actions["a"])
        assert self._mask[act], f"TeamEnv let masked action {act} through"
        reward = float(act) + (np.random.default_rng().random() if self.noisy else 0.0)
        obs, infos = self._out(act)
        return obs, {"a": reward}, {"a": False}, {"a": False}, infos


def test_gymnasiums_check_env_refuses_a_seed_dependent_mask() -> None:
    # Why the table runs check_team_env: check_env steps an action drawn from the previous state's mask.
    with pytest.raises(ValueError, match=r"action 0 for agent 'a' \(row 0\) is masked out; available actions: \[3\]"):
        check_env(TeamEnv(SeededMaskEnv()), skip_render_check=True)


def test_check_team_env_accepts_a_seed_dependent_mask_and_still_catches_a_random_step() -> None:
    check_team_env(TeamEnv(SeededMaskEnv()))
    with pytest.raises(AssertionError, match="Deterministic step rewards are not equivalent"):
        check_team_env(TeamEnv(SeededMaskEnv(noisy=True)))


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
        check_team_env(env)
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
        ("mpe_spread", {"n_agents": 0}, r"env\.options\.n_agents must be in \[1, 1024\].*, got 0"),
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
