"""The MAgent2 battle env: action tables against the engine, team sizes, dead agents, outcomes, options, rollout,
and a short training. The generic team-env checks (gymnasium's checker with and without state, PettingZoo's
`parallel_api_test` on the default options) run on its registry row in test_registry.py."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from envs import make_team_env
from envs.magent import (
    ATTACK_OFFSETS,
    MAGENT_STAY,
    MOVE_OFFSETS,
    N_ACTIONS,
    TO_MAGENT,
    BattleEnv,
    BattleOptions,
    default_map_size,
    min_map_size,
    scripted_actions,
    start_positions,
)


def _engine_with(red: list[int], blue: list[int]) -> Any:
    """magent2's battle_v4 with one agent per side at the given cells; no step or attack penalties."""
    from magent2.environments.battle import battle

    class Placed(battle._parallel_env):  # type: ignore[misc,name-defined]
        def generate_map(self) -> None:
            self.env.add_agents(self.handles[0], method="custom", pos=[[*red, 0]])
            self.env.add_agents(self.handles[1], method="custom", pos=[[*blue, 0]])

    rewards = {"step_reward": 0.0, "dead_penalty": 0.0, "attack_penalty": 0.0, "attack_opponent_reward": 0.2}
    env = Placed(20, False, rewards, 10, False)
    env.reset(seed=0)
    return env


def test_move_table_matches_the_engine() -> None:
    for action, offset in enumerate(MOVE_OFFSETS):
        env = _engine_with([10, 10], [2, 2])
        before = env.env.get_pos(env.handles[0])[0].copy()
        env.step({"red_0": action, "blue_0": MAGENT_STAY})
        np.testing.assert_array_equal(env.env.get_pos(env.handles[0])[0] - before, offset, err_msg=f"move {action}")


@pytest.mark.parametrize("offset", [tuple(o) for o in ATTACK_OFFSETS])
def test_attack_table_matches_the_engine(offset: tuple[int, int]) -> None:
    """Exactly the attack action whose offset points at the enemy hits it (reward only for hits here)."""
    hits = []
    for action in range(len(MOVE_OFFSETS), N_ACTIONS):
        env = _engine_with([10, 10], [10 + offset[0], 10 + offset[1]])
        _, rewards, *_ = env.step({"red_0": action, "blue_0": MAGENT_STAY})
        if rewards["red_0"] > 0:
            hits.append(action)
    assert hits == [len(MOVE_OFFSETS) + [tuple(o) for o in ATTACK_OFFSETS].index(offset)]


def test_our_actions_are_magent_actions_with_zero_and_stay_swapped() -> None:
    assert TO_MAGENT[0] == MAGENT_STAY and TO_MAGENT[MAGENT_STAY] == 0
    np.testing.assert_array_equal(np.delete(TO_MAGENT, [0, MAGENT_STAY]), np.delete(np.arange(N_ACTIONS), [0, 6]))
    # Through the env: one learning agent far from its enemy moves by the table, and action 0 stays put.
    for action in range(len(MOVE_OFFSETS)):
        env = BattleEnv(BattleOptions(n_agents=1, opponent="random"))
        env.reset(seed=0)
        grid, red = env._battle.env, env._battle.handles[0]
        before = grid.get_pos(red)[0].copy()
        env.step({"red_0": action})
        expected = (0, 0) if action == 0 else MOVE_OFFSETS[TO_MAGENT[action]]
        np.testing.assert_array_equal(grid.get_pos(red)[0] - before, expected, err_msg=f"our action {action}")


def test_scripted_policy_by_hand() -> None:
    own = np.array([[5, 5], [0, 0]])
    enemies = np.array([[6, 4], [20, 20]])
    actions = scripted_actions(own, enemies)
    # (5, 5): the nearest enemy is adjacent at (1, -1), the third attack (attacks follow the 13 moves).
    assert actions[0] == len(MOVE_OFFSETS) + 2
    # (0, 0) -> nearest (6, 4): the move (2, 0) leaves (4, 4), 32; (1, 1) leaves (5, 3), 34; (0, 2) leaves 40.
    assert tuple(MOVE_OFFSETS[actions[1]]) == (2, 0)
    far = scripted_actions(np.array([[5, 5]]), np.array([[5, 12]]))
    assert tuple(MOVE_OFFSETS[far[0]]) == (0, 2)
    np.testing.assert_array_equal(scripted_actions(own, np.zeros((0, 2), dtype=int)), [MAGENT_STAY] * 2)


@pytest.mark.parametrize("n_agents", [1, 12, 64])
def test_team_sizes_placement_and_ids(n_agents: int) -> None:
    env = BattleEnv(BattleOptions(n_agents=n_agents))
    size = default_map_size(n_agents)
    assert env.possible_agents == [f"red_{i}" for i in range(n_agents)]
    for seed in (0, 1):  # placement and agent ids are the same after every reset
        env.reset(seed=seed)
        grid = env._battle.env
        for side, handle in enumerate(env._battle.handles):
            np.testing.assert_array_equal(grid.get_agent_id(handle), side * n_agents + np.arange(n_agents))
            pos = grid.get_pos(handle)
            np.testing.assert_array_equal(pos, np.array(start_positions(n_agents, size, side))[:, :2])
            assert pos.min() >= 1 and pos.max() <= size - 2
        every = np.concatenate([grid.get_pos(h) for h in env._battle.handles])
        assert len({tuple(p) for p in every}) == 2 * n_agents
    team = make_team_env("magent_battle", {"n_agents": n_agents}, use_state=True)
    obs, _ = team.reset(seed=0)
    assert obs["obs"].shape == (n_agents, 13 * 13 * 5) and obs["state"].shape == (size * size * 5,)
    assert obs["action_mask"].shape == (n_agents, N_ACTIONS) and obs["alive"].sum() == n_agents


def test_map_grows_with_the_team() -> None:
    assert default_map_size(81) >= 45  # battle_v4's own map holds 81 per side on 45 x 45
    sizes = [default_map_size(n) for n in (4, 16, 64, 256)]
    assert sizes == sorted(sizes) and min_map_size(64) <= default_map_size(64)


@pytest.mark.parametrize("opponent", ["random", "scripted"])
def test_parallel_api(opponent: str) -> None:
    parallel_api_test(BattleEnv(BattleOptions(n_agents=4, opponent=opponent, max_cycles=80)), num_cycles=100)


def test_dead_agents_only_noop_and_outcome_counts() -> None:
    """A random team against the scripted opponent loses agents; the team env rows follow the info counts."""
    env = make_team_env("magent_battle", {"n_agents": 6, "opponent": "scripted", "max_cycles": 300})
    obs, info = env.reset(seed=3)
    assert info == {"won": False, "dead_allies": 0, "dead_enemies": 0}
    rng = np.random.default_rng(0)
    saw_dead = False
    done = False
    while not done:
        actions = np.where(obs["alive"] > 0, rng.integers(N_ACTIONS, size=6), 0)
        obs, _, terminated, truncated, info = env.step(actions)
        done = terminated or truncated
        dead = obs["alive"] == 0
        assert info["dead_allies"] == dead.sum()
        np.testing.assert_array_equal(obs["obs"][dead], 0.0)
        np.testing.assert_array_equal(obs["action_mask"][dead], np.eye(N_ACTIONS)[[0] * int(dead.sum())])
        saw_dead |= bool(0 < dead.sum() < 6)
        assert info["won"] is False or done
    assert saw_dead
    # The scripted side wipes out a random team: terminated, lost, every ally dead.
    assert terminated and not truncated and info["won"] is False and info["dead_allies"] == 6


def test_time_limit_outcome_is_decided_by_survivors() -> None:
    env = make_team_env("magent_battle", {"n_agents": 4, "opponent": "random", "max_cycles": 5})
    env.reset(seed=0)
    for t in range(5):
        _, _, terminated, truncated, info = env.step(np.zeros(4, dtype=np.int64))
        assert truncated == (t == 4) and not terminated
    # Nobody can die in 5 steps this far apart: equal survivors is not a win.
    assert info == {**info, "won": False, "dead_allies": 0, "dead_enemies": 0}


def test_a_team_that_kills_every_enemy_wins() -> None:
    """The learning side playing the scripted policy itself against a random opponent wins (enemies killed)."""
    env = BattleEnv(BattleOptions(n_agents=4, opponent="random", max_cycles=300))
    from_magent = np.argsort(TO_MAGENT)  # magent2 index -> ours
    env.reset(seed=0)
    grid, (red, blue) = env._battle.env, env._battle.handles
    infos: dict[str, dict[str, Any]] = {}
    while env.agents:
        chosen = scripted_actions(grid.get_pos(red), grid.get_pos(blue))
        names = [env._battle.possible_agents[i] for i in grid.get_agent_id(red)]
        _, _, terms, truncs, infos = env.step({a: int(from_magent[c]) for a, c in zip(names, chosen, strict=True)})
    facts = next(iter(infos.values()))
    assert all(terms.values()) and not any(truncs.values())
    assert facts["won"] is True and facts["dead_enemies"] == 4 and facts["dead_allies"] < 4


def test_seeded_episodes_repeat() -> None:
    def run() -> list[np.ndarray]:
        env = make_team_env("magent_battle", {"n_agents": 5, "opponent": "scripted", "opponent_epsilon": 0.5})
        obs, _ = env.reset(seed=11)
        env.action_space.seed(4)
        seen = [obs["obs"]]
        for _ in range(15):
            obs, *_ = env.step(env.action_space.sample())
            seen.append(obs["obs"])
        return seen

    for a, b in zip(run(), run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_matches_magent_while_both_sides_live() -> None:
    env = BattleEnv(BattleOptions(n_agents=9, opponent="random"))
    env.reset(seed=1)
    rng = np.random.default_rng(1)
    for _ in range(20):
        np.testing.assert_array_equal(env.state(), env._battle.state())
        env.step({a: int(rng.integers(N_ACTIONS)) for a in env.agents})


def test_render_is_an_rgb_frame() -> None:
    env = make_team_env("magent_battle", {"n_agents": 2}, render_mode="rgb_array")
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3
    env.close()


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"n_agents": 0}, ValueError, r"env\.options\.n_agents must be in \[1, 1024\].*, got 0"),
        ({"n_agents": 64, "map_size": 30}, ValueError, r"env\.options\.map_size must be >= 37 for 64 agents"),
        ({"opponent": "greedy"}, ValueError, r"env\.options\.opponent must be one of random, scripted, got 'greedy'"),
        ({"opponent_epsilon": 1.5}, ValueError, r"env\.options\.opponent_epsilon must be in \[0, 1\]"),
        ({"max_cycles": 0}, ValueError, r"env\.options\.max_cycles must be >= 1"),
        ({"map_size": 20.5}, TypeError, r"env\.options\.map_size must be int \| None, got 20\.5"),
        ({"n_agent": 3}, ValueError, r"unknown option env\.options\.n_agent for env 'magent_battle'"),
    ],
)
def test_bad_options_are_named(options: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_team_env("magent_battle", options)


def test_bad_actions_are_named() -> None:
    env = BattleEnv(BattleOptions(n_agents=2))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"no action for live agent 'red_1'"):
        env.step({"red_0": 0})
    with pytest.raises(ValueError, match=r"action 21 for agent 'red_0' is invalid; expected an int in 0\.\.20"):
        env.step({"red_0": 21, "red_1": 0})


def test_rollout_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from agents.cli import main

    assert main(["rollout", "magent_battle", "n_agents=3", "max_cycles=20", "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert "magent_battle: 3 agents, random policy" in out and "episode 2:" in out and "win_rate" in out


@pytest.mark.slow
def test_short_training_runs_and_checkpoints(tmp_path: Any) -> None:
    """A few thousand env steps of real training on the shipped config, shrunk; then evaluate reads it back."""
    from agents import checkpoints as ckpt
    from agents.cli import main

    code = main(
        [
            "train",
            "configs/magent_battle.yaml",
            "env.options.n_agents=4",
            "env.options.max_cycles=40",
            "training.train_batch_size=1000",
            "training.minibatch_size=250",
            "training.num_epochs=1",
            "model.embed_dim=16",
            "resources.num_envs_per_env_runner=2",
            "stop.env_steps=2000",
            "run.checkpoint_every=1",
            f"run.output_dir={tmp_path}",
            "run.name=battle",
        ]
    )
    assert code == 0
    latest = ckpt.latest_checkpoint(tmp_path / "battle")
    assert ckpt.read_meta(latest)["env_steps"] >= 2000
    assert main(["evaluate", str(tmp_path / "battle"), "--episodes", "2"]) == 0


def _nearest_by_all_pairs(own, enemies):
    """The reference: every squared distance, the first of the smallest."""
    return ((enemies[None, :, :] - own[:, None, :]) ** 2).sum(-1).argmin(1)


@pytest.mark.parametrize("m, k, side", [(1, 1, 5), (40, 3, 8), (300, 200, 30), (500, 900, 60), (64, 64, 9)])
def test_nearest_enemy_equals_the_all_pairs_argmin_with_its_ties(m, k, side):
    """Integer grids tie often (squared distance 25 has 12 lattice points); the tree must break them as argmin."""
    from envs.magent import nearest_enemy

    rng = np.random.default_rng(m * 1000 + k)
    for _ in range(5):
        cells = rng.choice(side * side, size=m + k, replace=m + k > side * side)
        pos = np.stack([cells // side, cells % side], 1)
        own, enemies = pos[:m], pos[m:]
        np.testing.assert_array_equal(nearest_enemy(own, enemies), _nearest_by_all_pairs(own, enemies))


def test_nearest_enemy_falls_back_when_the_tie_outlasts_the_candidates():
    """An agent at the centre of a ring of 24 enemies at distance 5 (more ties than NEAREST_CANDIDATES)."""
    from envs.magent import NEAREST_CANDIDATES, nearest_enemy

    ring = np.array([(x, y) for x in range(-5, 6) for y in range(-5, 6) if x * x + y * y == 25] * 2) + 20
    assert len(ring) > NEAREST_CANDIDATES
    own = np.array([[20, 20], [0, 0]])
    np.testing.assert_array_equal(nearest_enemy(own, ring), _nearest_by_all_pairs(own, ring))
