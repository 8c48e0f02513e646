"""SMAX (envs/smax.py): the vector env against B unvectorised jaxmarl games and against B `TeamEnv`s of `SMAXEnv`
stepped with the same keys and actions; masks; auto-reset boundaries; spaces; the VectorEnv API; RLlib wiring
and a short training, rollout and evaluate through the CLI.

The jitted functions compile once per module (module fixtures); the whole module takes about a minute or two.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from envs import smax
from envs.registry import ENVS

pytestmark = pytest.mark.skipif(smax.unavailable_reason() is not None, reason=str(smax.unavailable_reason()))

B, SEED, STEPS, MAX_STEPS, HISTORY = 4, 7, 100, 12, 3
"""Envs, seed, recorded steps; a short time limit so that the recording holds truncations and terminations."""


def smax_action(team_action: int) -> int:
    """SMAC's layout (0 no-op, 1 stop, 2-5 move, 6.. attack) -> SMAX's (0-3 move, 4 stop, 5.. attack)."""
    if team_action <= 1:
        return 4
    return team_action - 2 if team_action <= 5 else team_action - 1


def team_mask(smax_mask: np.ndarray, alive: bool) -> np.ndarray:
    """SMAX's mask of one ally in SMAC's layout; a dead ally has only the no-op."""
    out = np.zeros(len(smax_mask) + 1, dtype=np.float32)
    if not alive:
        out[0] = 1.0
        return out
    out[1] = smax_mask[4]
    out[2:6] = smax_mask[:4]
    out[6:] = smax_mask[5:]
    return out


@dataclasses.dataclass
class Recording:
    reset_obs: dict[str, np.ndarray]
    reset_info: dict[str, Any]
    actions: list[np.ndarray]
    steps: list[tuple[Any, ...]]  # (obs, reward, terminated, truncated, infos) as returned, copied


@pytest.fixture(scope="module")
def options() -> smax.SMAXOptions:
    return smax.SMAXOptions(max_steps=MAX_STEPS)


@pytest.fixture(scope="module")
def vec(options) -> smax.SMAXVectorEnv:
    return smax.SMAXVectorEnv("3m", options, num_envs=B, use_state=True, history=HISTORY)


def _copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _copy(v) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(_copy(v) for v in tree)
    return np.array(tree, copy=True)


@pytest.fixture(scope="module")
def recording(vec) -> Recording:
    """STEPS steps of uniformly random available actions, plus garbage actions for dead agents and ended envs."""
    rng = np.random.default_rng(0)
    obs, info = vec.reset(seed=SEED)
    rec = Recording(_copy(obs), _copy(info), [], [])
    done = np.zeros(B, dtype=bool)
    for _ in range(STEPS):
        mask = obs["action_mask"] > 0
        actions = np.where(mask, rng.random(mask.shape), -1.0).argmax(-1)  # (B, N)
        ignored = (obs["alive"] == 0) | done[:, None]
        actions = np.where(ignored, rng.integers(0, vec.n_actions, actions.shape), actions)
        obs, reward, terminated, truncated, infos = vec.step(actions)
        rec.actions.append(actions)
        rec.steps.append(_copy((obs, reward, terminated, truncated, infos)))
        done = terminated | truncated
    return rec


def test_recording_holds_both_kinds_of_episode_end(recording):
    terminated = np.array([s[2] for s in recording.steps])
    truncated = np.array([s[3] for s in recording.steps])
    assert terminated.sum() >= 2 and truncated.sum() >= 2
    assert not (terminated & truncated).any()


def test_vector_env_agrees_with_single_jaxmarl_games(recording):
    """Each env b equals jaxmarl's own HeuristicEnemySMAX stepped with key chain PRNGKey(SEED + b)."""
    import jax

    module = smax.import_jaxmarl()
    game = module.HeuristicEnemySMAX(scenario=module.map_name_to_scenario("3m"), max_steps=MAX_STEPS)
    reset, step, avail = jax.jit(game.reset), jax.jit(game.step_env), jax.jit(game.get_avail_actions)
    agents = game.agents
    for b in range(B):
        key = jax.random.PRNGKey(SEED + b)
        key, sub = jax.random.split(key)
        raw_obs, state = reset(sub)
        expected_obs = np.stack([np.asarray(raw_obs[a]) for a in agents])
        np.testing.assert_array_equal(recording.reset_obs["obs"][b], expected_obs)
        np.testing.assert_array_equal(recording.reset_obs["state"][b], np.asarray(raw_obs["world_state"]))
        ended = False
        for t, (actions, (obs, reward, terminated, truncated, _)) in enumerate(
            zip(recording.actions, recording.steps, strict=True)
        ):
            key, sub = jax.random.split(key)
            if ended:  # NEXT_STEP auto-reset: this step is the first of a fresh battle
                raw_obs, state = reset(sub)
                assert reward[b] == 0.0 and not terminated[b] and not truncated[b], t
                np.testing.assert_array_equal(obs["obs"][b], np.stack([np.asarray(raw_obs[a]) for a in agents]))
                np.testing.assert_array_equal(obs["alive"][b], np.ones(len(agents)))
                ended = False
                continue
            alive_before = np.asarray(state.state.unit_alive[: len(agents)])
            acts = {a: smax_action(int(actions[b, i])) if alive_before[i] else 4 for i, a in enumerate(agents)}
            raw_obs, state, rewards, dones, _ = step(sub, state, acts)
            alive = np.asarray(state.state.unit_alive[: len(agents)])
            enemies = np.asarray(state.state.unit_alive[len(agents) :])
            over = not alive.any() or not enemies.any()
            assert bool(terminated[b]) == over, t
            assert bool(truncated[b]) == (bool(dones["__all__"]) and not over), t
            np.testing.assert_allclose(reward[b], float(rewards[agents[0]]), rtol=1e-6)
            np.testing.assert_array_equal(obs["state"][b], np.asarray(raw_obs["world_state"]))
            masks = avail(state)
            for i, a in enumerate(agents):
                live = bool(alive[i]) and not over
                np.testing.assert_array_equal(obs["alive"][b, i], float(live))
                expected = np.asarray(raw_obs[a]) if live else np.zeros_like(obs["obs"][b, i])
                np.testing.assert_array_equal(obs["obs"][b, i], expected)
                np.testing.assert_array_equal(obs["action_mask"][b, i], team_mask(np.asarray(masks[a]), live))
            ended = bool(dones["__all__"])


def test_vector_env_agrees_with_team_envs(recording):
    """Env b equals `TeamEnv(SMAXEnv)` reset with seed SEED + b (and without a seed after each episode): the whole
    observation dict (history and state included), reward, dones and the per-env infos RLlib reads."""
    from envs.registry import make_team_env

    team = make_team_env("smax_3m", {"max_steps": MAX_STEPS}, use_state=True, history=HISTORY)
    for b in range(B):
        obs, info = team.reset(seed=SEED + b)
        _assert_obs_equal(obs, recording.reset_obs, b)
        assert info == env_info(recording.reset_info, b)
        ended = False
        for t, (actions, step) in enumerate(zip(recording.actions, recording.steps, strict=True)):
            vec_obs, vec_reward, vec_terminated, vec_truncated, vec_infos = step
            vec_info = env_info(vec_infos, b)
            if ended:
                obs, info = team.reset()
                reward, terminated, truncated = 0.0, False, False
            else:
                alive = obs["alive"] > 0
                obs, reward, terminated, truncated, info = team.step(np.where(alive, actions[b], 0))
            _assert_obs_equal(obs, vec_obs, b)
            assert (terminated, truncated) == (vec_terminated[b], vec_truncated[b]), t
            np.testing.assert_allclose(reward, vec_reward[b], rtol=1e-6)
            assert info.keys() == vec_info.keys(), t
            for key, value in info.items():
                np.testing.assert_allclose(value, vec_info[key], rtol=1e-6, err_msg=f"{key} at step {t}")
            ended = terminated or truncated
    team.close()


def env_info(infos: dict[str, Any], b: int) -> dict[str, Any]:
    """Env b's info from gymnasium's vector info dict (a key counts where its "_key" entry is True)."""
    return {k: v[b] for k, v in infos.items() if not k.startswith("_") and infos[f"_{k}"][b]}


def _assert_obs_equal(single: dict[str, np.ndarray], batch: dict[str, np.ndarray], b: int) -> None:
    assert single.keys() == batch.keys()
    for key, value in single.items():
        np.testing.assert_array_equal(value, batch[key][b], err_msg=key)
        assert value.dtype == batch[key].dtype, key


def test_masks_follow_the_team_contract(recording):
    for obs, *_ in [(recording.reset_obs,), *recording.steps]:
        mask, alive = obs["action_mask"], obs["alive"] > 0  # (B, N, A), (B, N)
        assert ((mask == 0) | (mask == 1)).all()
        np.testing.assert_array_equal(mask[..., 0], ~alive)  # the no-op is a dead agent's, and its only action
        assert (mask[~alive][:, 1:] == 0).all()
        assert (mask[alive][:, 1] == 1).all()  # a live unit can always stop
        assert (obs["obs"][~alive] == 0).all()


def test_auto_reset_boundaries(recording):
    """The step after an episode's last one starts a fresh battle: no reward, no agent_rewards, full team,
    a history window of zeros before its first observation."""
    seen = 0
    for (_, _, terminated, truncated, _), (obs, reward, term2, trunc2, infos) in zip(
        recording.steps, recording.steps[1:], strict=False
    ):
        for b in np.flatnonzero(terminated | truncated):
            seen += 1
            assert reward[b] == 0.0 and not term2[b] and not trunc2[b]
            assert (obs["alive"][b] == 1).all() and infos["dead_allies"][b] == 0 and not infos["won"][b]
            assert not infos.get("_agent_rewards", np.zeros(B, bool))[b]
            assert (obs["history"][b, :-1] == 0).all()
            np.testing.assert_array_equal(obs["history"][b, -1], obs["obs"][b])
    assert seen >= 4


def test_terminal_and_truncated_final_observations(recording):
    """A terminated battle ends the whole team (rows zero, no-op only); a time limit keeps the live agents'
    observations for bootstrapping. A won battle is flagged in info."""
    for obs, _, terminated, truncated, infos in recording.steps:
        for b in np.flatnonzero(terminated):
            assert (obs["alive"][b] == 0).all() and (obs["obs"][b] == 0).all()
            assert infos["won"][b] == (infos["dead_enemies"][b] == 3 and infos["dead_allies"][b] < 3)
        for b in np.flatnonzero(truncated):
            assert obs["alive"][b].sum() == 3 - infos["dead_allies"][b] > 0
            assert not infos["won"][b]


def test_masked_action_of_a_live_agent_raises(vec):
    vec.reset(seed=1)
    actions = np.ones((B, vec.n_agents), dtype=np.int64)  # stop: always available
    actions[2, 1] = 0  # the no-op belongs to dead agents
    with pytest.raises(ValueError, match="ally_1 of env 2 is not available"):
        vec.step(actions)
    with pytest.raises(ValueError, match="shape"):
        vec.step(actions[:, :2])
    vec.step(np.ones((B, vec.n_agents), dtype=np.int64))


def test_vector_env_api(vec):
    """gymnasium VectorEnv facts RLlib relies on: NEXT_STEP autoreset, batched spaces, seeding, sample()."""
    from gymnasium.vector import AutoresetMode

    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert vec.num_envs == B
    obs_a, _ = vec.reset(seed=11)
    assert vec.observation_space.contains(obs_a)
    obs_b, _ = vec.reset(seed=11)
    for key in obs_a:
        np.testing.assert_array_equal(obs_a[key], obs_b[key])
    for _ in range(40):
        actions = vec.action_space.sample()
        assert vec.action_space.contains(actions)
        obs, reward, terminated, truncated, _ = vec.step(actions)  # sample() only draws available actions
        assert vec.observation_space.contains(obs)
        assert reward.shape == terminated.shape == truncated.shape == (B,)
        assert terminated.dtype == truncated.dtype == np.bool_


@pytest.mark.parametrize(
    ("scenario", "n", "a"),
    [
        ("3m", 3, 9),
        ("2s3z", 5, 11),
        ("5m_vs_6m", 5, 12),
        ("3s5z", 8, 14),
        ("6h_vs_8z", 6, 14),
        ("smacv2_5_units", 5, 11),
    ],
)
def test_spaces_are_the_team_env_spaces(scenario, n, a):
    from envs.team import TeamEnv

    for use_state, history in [(False, 0), (True, 2)]:
        team = TeamEnv(smax.SMAXEnv(scenario), use_state=use_state, history=history)
        vec = smax.SMAXVectorEnv(scenario, num_envs=2, use_state=use_state, history=history)
        assert vec.single_observation_space == team.observation_space
        assert vec.single_action_space == team.action_space
        assert team.n_agents == n and team.n_actions == a
        assert list(vec.single_observation_space) == list(team.observation_space)


def test_smacv2_5_units_steps_within_its_spaces():
    vec = smax.SMAXVectorEnv("smacv2_5_units", num_envs=8, use_state=True)
    obs, _ = vec.reset(seed=0)
    first = obs["obs"].copy()
    for _ in range(30):
        obs, *_ = vec.step(vec.action_space.sample())
        assert vec.observation_space.contains(obs)
    assert not np.array_equal(first[0], first[1])  # unit types and positions are drawn per battle


def test_table_rows_and_registry_factories():
    from envs.registry import is_vectorised, make_team_vector_env

    for scenario in smax.TABLE_SCENARIOS:
        assert is_vectorised(f"smax_{scenario}")
    assert not is_vectorised("mpe_spread")
    with pytest.raises(ValueError, match="not natively vectorised"):
        make_team_vector_env("mpe_spread", num_envs=2)
    with pytest.raises(ValueError, match="attack_mode"):
        make_team_vector_env("smax_3m", {"attack_mode": "nearest"}, num_envs=2)
    assert ENVS["smax_3m"].options_cls is smax.SMAXOptions


def test_build_hands_rllib_a_vector_entry_point():
    from agents.build import build_ppo_config, env_config_dict, make_env_from_dict, probe_env
    from agents.config import load_config

    config = load_config("configs/smax_3m.yaml")
    spaces = probe_env(config)
    assert spaces.n_agents == 3
    ppo = build_ppo_config(config)
    assert ppo.gym_env_vectorize_mode == "vector_entry_point"
    env = make_env_from_dict({**env_config_dict(config), "num_envs": 3})
    assert isinstance(env, smax.SMAXVectorEnv) and env.num_envs == 3
    assert env.single_observation_space == spaces.observation_space
    assert build_ppo_config(load_config("configs/mpe_spread.yaml")).gym_env_vectorize_mode == "sync"


@pytest.mark.slow
def test_train_rollout_evaluate_through_the_cli(tmp_path: Path, capsys):
    """A 2-iteration training (3,200 env steps) on the vector env, then rollout and evaluate of the result."""
    from agents.cli import main

    code = main(
        [
            "train",
            "configs/smax_3m.yaml",
            "training.train_batch_size=1600",
            "training.minibatch_size=800",
            "training.num_epochs=2",
            "model.embed_dim=16",
            "resources.num_envs_per_env_runner=16",
            "stop.env_steps=3200",
            "run.checkpoint_every=1",
            f"run.output_dir={tmp_path}",
            "run.name=r",
        ]
    )
    assert code == 0
    assert main(["rollout", "smax_3m", "--episodes", "2"]) == 0
    assert main(["rollout", "smax_3m", "--checkpoint", str(tmp_path / "r"), "--episodes", "2"]) == 0
    assert main(["evaluate", str(tmp_path / "r"), "--episodes", "3"]) == 0
    out = capsys.readouterr().out
    assert "random policy" in out and "win_rate" in out
