"""The SMACv2 adapter against a stand-in of smacv2's API (tests/envs/smacv2_standin.py) and, where smacv2 and
StarCraft II are installed, against the real package: the team-env checks, masks, dead units, outcomes, protocol
errors, the capability config of the scenarios, and the install instructions when smacv2 is missing."""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

from envs.registry import ENVS, EnvEntry
from envs.smacv2 import (
    MissingDependencyError,
    SMACv2Env,
    SMACv2Options,
    capability_config,
    env_kwargs,
    unavailable_reason,
)
from envs.team import TeamEnv
from tests.envs.smacv2_standin import StandInCapabilityEnv, standin_factory

REAL_REASON = unavailable_reason()


@pytest.fixture(params=["standin", "real"])
def raw(request: pytest.FixtureRequest) -> Iterator[SMACv2Env]:
    """SMACv2Env (protoss 5v5) over the stand-in, and over the real smacv2 where it is installed."""
    if request.param == "real":
        if REAL_REASON is not None:
            pytest.skip(f"real smacv2 not available: {REAL_REASON}")
        env = SMACv2Env(SMACv2Options(seed=1))
    else:
        env = SMACv2Env(SMACv2Options(), factory=standin_factory(ally_deaths={3: [1], 5: [3]}))
    yield env
    env.close()


def _play(
    env: TeamEnv, seed: int = 0, steps: int = 400, attack: bool = True
) -> Iterator[tuple[dict[str, Any], dict[str, Any], bool]]:
    """Random available actions until the episode ends (`attack=False`: stop instead of attacking); yields
    (obs, info, done) after each step."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(steps):
        actions = env.action_space.sample()
        if not attack:
            actions[actions >= 6] = 1  # 6.. attack; 1 (stop) is always available to a live unit
        obs, _, terminated, truncated, info = env.step(actions)
        done = terminated or truncated
        yield obs, info, done
        if done:
            return


# ---------------------------------------------------------------------------------- stand-in and real smacv2


@pytest.mark.parametrize("use_state", [False, True])
def test_team_env_passes_env_checker(raw: SMACv2Env, use_state: bool) -> None:
    env = TeamEnv(raw, use_state=use_state)
    assert env.observation_space["obs"].shape == (5, raw._obs_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unbounded observation spaces only warn
        check_env(env, skip_render_check=True)


def test_parallel_api(raw: SMACv2Env) -> None:
    with warnings.catch_warnings():
        # Dead units are credited the team reward on purpose (module docstring of envs/smacv2.py).
        warnings.filterwarnings("ignore", message="Agent was given reward but was dead last turn")
        parallel_api_test(raw, num_cycles=60)


def test_masks_are_smacv2s_and_forbid_unavailable_actions(raw: SMACv2Env) -> None:
    env = TeamEnv(raw)
    for obs, _, done in _play(env):
        if done:
            break
        expected = np.asarray(raw._env.get_avail_actions(), dtype=np.float32)
        np.testing.assert_array_equal(obs["action_mask"], expected)
        live = np.flatnonzero(obs["alive"])
        agent = int(live[0])
        blocked = np.flatnonzero(obs["action_mask"][agent] == 0)
        actions = env.action_space.sample()
        actions[agent] = blocked[0]
        with pytest.raises(ValueError, match=rf"action {blocked[0]} for agent 'ally_{agent}' \(row {agent}\)"):
            env.step(actions)
        with pytest.raises(ValueError, match=rf"action {blocked[0]} for agent 'ally_{agent}' is not available"):
            raw.step({a: int(actions[i]) for i, a in enumerate(raw.possible_agents) if a in raw.agents})


def test_dead_units_are_zero_rows_with_only_the_noop(raw: SMACv2Env) -> None:
    env = TeamEnv(raw)
    noop = np.eye(env.n_actions)[0]
    seen_dead = False
    for obs, info, _ in _play(env, attack=False):  # nobody wins early: the stand-in's units die at steps 3, 5
        seen_dead |= bool((obs["alive"] == 0).any())
        dead = obs["alive"] == 0
        if not info.get("protocol_error"):
            assert info["dead_allies"] == dead.sum()
        np.testing.assert_array_equal(obs["obs"][dead], 0.0)
        for row in obs["action_mask"][dead]:
            np.testing.assert_array_equal(row, noop)
        assert (obs["action_mask"][~dead, 0] == 0).all()  # a live unit never has the no-op
    assert seen_dead or raw._env.__class__.__name__ != "StandInCapabilityEnv"  # the stand-in kills two units


# ------------------------------------------------------------------------------------------- the stand-in only


def _team(**settings: Any) -> tuple[TeamEnv, Any]:
    factory = standin_factory(**settings)
    env = TeamEnv(SMACv2Env(SMACv2Options(), factory=factory), use_state=True)
    return env, factory.built


def test_dead_units_get_the_noop_and_the_team_reward_is_smacv2s() -> None:
    env, sc2 = _team(ally_deaths={2: [1], 3: [0, 4]}, episode_limit=20)
    env.reset(seed=0)
    stop = np.ones(5, dtype=np.int64)  # action 1, stop: always available to a live unit
    obs, reward, *_ = env.step(stop)
    assert reward == 0.0 and obs["alive"].tolist() == [1, 1, 1, 1, 1]
    obs, *_, info = env.step(stop)
    assert obs["alive"].tolist() == [1, 0, 1, 1, 1] and info["dead_allies"] == 1
    attack_0 = np.array([1, 1, 6, 1, 1])  # ally 2 kills enemy 0: (2 + 0) is even, in range
    obs, reward, *_, info = env.step(attack_0)
    assert sc2.received[-1] == [1, 0, 6, 1, 1]  # the dead unit was sent the no-op
    assert obs["alive"].tolist() == [0, 0, 1, 1, 0] and info["dead_enemies"] == 1
    assert reward == 1.0  # one kill: mean over all 5 agents of the team reward credited to each
    np.testing.assert_array_equal(info["agent_rewards"], np.ones(5))
    env.step(np.array([0, 0, 1, 1, 0]))
    assert sc2.received[-1] == [0, 0, 1, 1, 0]


def test_winning_terminates_with_won() -> None:
    env, _ = _team(episode_limit=20)
    env.reset(seed=0)
    # Ally 4 is in range of enemies 0, 2 and 4 (the last one); ally 3 of 1 and 3, ally 0 of 0, 2, 4.
    _, reward, terminated, truncated, info = env.step(np.array([6, 7, 8, 9, 10]))
    assert terminated and not truncated and info["won"] is True and info["dead_enemies"] == 5
    assert reward == pytest.approx(5 + 10)


def test_time_limit_truncates_without_a_win() -> None:
    env, _ = _team(episode_limit=3)
    env.reset(seed=0)
    for t in range(3):
        obs, _, terminated, truncated, info = env.step(np.ones(5, dtype=np.int64))
        assert not terminated and truncated == (t == 2)
    assert info["won"] is False and obs["alive"].tolist() == [1] * 5


def test_a_wiped_out_team_terminates_lost() -> None:
    env, _ = _team(ally_deaths={2: [0, 1, 2, 3, 4]})
    env.reset(seed=0)
    env.step(np.ones(5, dtype=np.int64))
    obs, _, terminated, truncated, info = env.step(np.ones(5, dtype=np.int64))
    assert terminated and not truncated and info["won"] is False and info["dead_allies"] == 5
    assert obs["alive"].sum() == 0


def test_protocol_error_is_recorded_and_truncates_with_the_last_real_observation() -> None:
    env, sc2 = _team(protocol_error_at=3, ally_deaths={1: [2]})
    env.reset(seed=0)
    env.step(np.ones(5, dtype=np.int64))
    before, *_, info = env.step(np.ones(5, dtype=np.int64))
    assert info["protocol_error"] is False
    obs, reward, terminated, truncated, info = env.step(np.ones(5, dtype=np.int64))
    assert sc2.restarts == 1 and reward == 0.0
    assert truncated and not terminated and info["protocol_error"] is True
    assert info["dead_allies"] == 1  # the last known counts
    for key in ("obs", "alive", "action_mask", "state"):
        np.testing.assert_array_equal(obs[key], before[key])
    obs, info = env.reset()
    assert info["protocol_error"] is False and obs["alive"].sum() == 5


def test_reset_that_returns_none_is_fine() -> None:
    env, _ = _team(reset_returns_none=True)
    obs, _ = env.reset(seed=0)
    assert obs["obs"].shape == (5, 4 + 2 * 5 + 5) and obs["alive"].sum() == 5


def test_close_closes_smacv2() -> None:
    env, sc2 = _team()
    env.close()
    assert sc2.closed


@pytest.mark.parametrize(
    ("method", "bad", "match"),
    [
        ("get_avail_actions", lambda: [[0, 1]] * 5, r"get_avail_actions\(\) gave shape \(5, 2\); expected \(5, 11\)"),
        ("get_avail_actions", lambda: [[1, 1] + [0] * 9] * 5, r"offered the no-op and other actions to unit 0"),
        ("get_obs", lambda: [np.zeros(3)] * 5, r"observation of unit 0 has shape \(3,\); expected \(19,\)"),
        ("get_obs", lambda: [np.zeros(19)] * 4, r"returned 4 observations; expected one per unit \(5\)"),
    ],
)
def test_bad_smacv2_outputs_are_named(method: str, bad: Any, match: str) -> None:
    env, sc2 = _team()
    setattr(sc2, method, bad)
    with pytest.raises(ValueError, match=match):
        env.reset(seed=0)


def test_bad_step_info_and_env_info_are_named() -> None:
    env, sc2 = _team()
    env.reset(seed=0)
    sc2.step = lambda actions: (0.0, False, {"battle_won": False})
    with pytest.raises(ValueError, match=r"step\(\) returned info .*expected a dict with battle_won, dead_allies"):
        env.step(np.ones(5, dtype=np.int64))

    class NoShapes(StandInCapabilityEnv):
        def get_env_info(self) -> dict[str, Any]:
            return {**super().get_env_info(), "obs_shape": None}

    with pytest.raises(ValueError, match=r"expected integers for obs_shape"):
        SMACv2Env(SMACv2Options(), factory=lambda kwargs: NoShapes(**kwargs))


# ------------------------------------------------------------------------------ scenarios and capability config


def test_protoss_5v5_capability_config_is_smacv2s_scenario() -> None:
    """Against smacv2's own sc2_gen_protoss.yaml (its capability_config, written out here by hand)."""
    expected = {
        "n_units": 5,
        "n_enemies": 5,
        "team_gen": {
            "dist_type": "weighted_teams",
            "unit_types": ["stalker", "zealot", "colossus"],
            "weights": [0.45, 0.45, 0.1],
            "observe": True,
        },
        "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": 32, "map_y": 32},
    }
    assert capability_config(SMACv2Options()) == expected
    kwargs = env_kwargs(SMACv2Options())
    assert kwargs["map_name"] == "10gen_protoss" and kwargs["use_unit_ranges"] is True
    assert kwargs["obs_own_pos"] is True and kwargs["conic_fov"] is False


def test_terran_zerg_and_unequal_scenarios() -> None:
    terran = capability_config(SMACv2Options(race="terran", n_units=10, n_enemies=11))
    assert terran["team_gen"]["unit_types"] == ["marine", "marauder", "medivac"]
    assert terran["team_gen"]["exception_unit_types"] == ["medivac"]
    assert (terran["n_units"], terran["n_enemies"]) == (10, 11)
    zerg = capability_config(SMACv2Options(race="zerg"))
    assert zerg["team_gen"]["weights"] == [0.45, 0.1, 0.45] and zerg["team_gen"]["exception_unit_types"] == ["baneling"]
    custom = capability_config(SMACv2Options(unit_types="stalker:0.5,zealot:0.5", start_positions="surrounded"))
    assert custom["team_gen"]["unit_types"] == ["stalker", "zealot"] and "p" not in custom["start_positions"]
    # Each env gets its own dicts: smacv2 writes into them.
    a, b = capability_config(SMACv2Options()), capability_config(SMACv2Options())
    a["team_gen"]["env_key"] = "team_gen"
    assert "env_key" not in b["team_gen"]


def test_unequal_teams_through_the_adapter() -> None:
    factory = standin_factory()
    env = TeamEnv(SMACv2Env(SMACv2Options(race="zerg", n_units=5, n_enemies=6), factory=factory))
    assert env.n_agents == 5 and env.n_actions == 6 + 6
    assert factory.built.kwargs["map_name"] == "10gen_zerg"
    assert factory.built.kwargs["capability_config"]["n_enemies"] == 6


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"race": "human"}, ValueError, r"env\.options\.race must be one of protoss, terran, zerg, got 'human'"),
        ({"n_units": 0}, ValueError, r"env\.options\.n_units must be in \[1, 1024\]"),
        ({"unit_types": "marine:1"}, ValueError, r"env\.options\.unit_types must be 'type:weight,\.\.\.' with types"),
        ({"unit_types": "stalker:0.5,zealot:0.4"}, ValueError, r"weights must sum to 1, got 0\.9"),
        ({"unit_types": "stalker"}, ValueError, r"env\.options\.unit_types must be 'type:weight"),
        ({"start_positions": "random"}, ValueError, r"env\.options\.start_positions must be one of surrounded_and"),
        ({"reflect_probability": 2}, ValueError, r"env\.options\.reflect_probability must be in \[0, 1\]"),
        ({"difficulty": 7}, TypeError, r"env\.options\.difficulty must be str, got 7"),
        ({"difficulty": "B"}, ValueError, r"env\.options\.difficulty must be one of 1, 2"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SMACv2Options(**options)


# ------------------------------------------------------------------------------------------ missing installation


def test_missing_smacv2_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "smacv2" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"not installed: pip install 'commformer\[smacv2\]'"):
        SMACv2Env(SMACv2Options())
    assert issubclass(MissingDependencyError, ValueError)  # configs turn it into a ConfigError before Ray starts


def test_missing_starcraft_says_where_it_looked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "smacv2" else real_find_spec(name, *a)
    )
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(MissingDependencyError, match=rf"StarCraft II, which is not at SC2PATH={tmp_path}: install"):
        SMACv2Env(SMACv2Options())
    (tmp_path / "Versions").mkdir()
    with pytest.raises(MissingDependencyError, match=r"needs the SMAC map 32x32_flat\.SC2Map in .*Maps/SMAC_Maps"):
        SMACv2Env(SMACv2Options())
    monkeypatch.delenv("SC2PATH")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(MissingDependencyError, match=r"home/StarCraftII \(SC2PATH is not set\)"):
        SMACv2Env(SMACv2Options())


# ------------------------------------------------------------------------------------------------------ the CLI


def test_rollout_cli_with_the_standin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from agents.cli import main

    def make(options: SMACv2Options, render_mode: str | None = None) -> SMACv2Env:
        return SMACv2Env(options, factory=standin_factory(ally_deaths={4: [0]}), render_mode=render_mode)

    entry = ENVS.get("smacv2") or EnvEntry(SMACv2Options, make, "smacv2 (stand-in)")
    monkeypatch.setitem(ENVS, "smacv2", dataclasses.replace(entry, make=make))
    assert main(["rollout", "smacv2", "n_units=4", "n_enemies=6", "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "smacv2: 4 agents, random policy" in out and "episode 2:" in out and "win_rate" in out


CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("smacv2_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_name_their_scenario_and_fit_the_model(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/smacv2_<race>_<n>v<m>.yaml: the options say that scenario, and the model fits it (stand-in)."""
    from agents.build import probe_env
    from agents.config import load_config

    race, sizes = path.stem.split("_")[1:]
    n, m = (int(x) for x in sizes.split("v"))
    config = load_config(path)
    assert (config.env.options.race, config.env.options.n_units, config.env.options.n_enemies) == (race, n, m)

    def make(options: SMACv2Options, render_mode: str | None = None) -> SMACv2Env:
        return SMACv2Env(options, factory=standin_factory(), render_mode=render_mode)

    monkeypatch.setitem(ENVS, "smacv2", dataclasses.replace(ENVS["smacv2"], make=make))
    assert probe_env(config).n_agents == n


def test_there_are_the_scenarios_of_the_issue() -> None:
    names = {p.stem for p in CONFIGS}
    assert {f"smacv2_{r}_5v5" for r in ("protoss", "terran", "zerg")} <= names
    assert {f"smacv2_{r}_10v10" for r in ("protoss", "terran", "zerg")} <= names
    assert {f"smacv2_{r}_20v20" for r in ("protoss", "terran", "zerg")} <= names
    # the unequal ones of smacv2's table (n vs n + 1 and 20 vs 23) and one more
    assert {f"smacv2_{r}_{size}" for r in ("protoss", "terran", "zerg") for size in ("10v11", "20v23")} <= names
    assert "smacv2_protoss_5v6" in names
