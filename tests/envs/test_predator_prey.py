"""envs/predator_prey.py: the rules on hand-built layouts, observations / masks / state against a loop reference,
the vector env against B single team envs through auto-resets, PettingZoo's and gymnasium's checks, the options."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from pettingzoo.test import parallel_api_test

from envs.batched import BatchedParallelEnv
from envs.options import options_from_mapping
from envs.predator_prey import (
    CAPTURE,
    DOWN,
    LEFT,
    PREDATOR_PREY_SIZES,
    RIGHT,
    STAY,
    UP,
    PredatorCapturePreyGame,
    PredatorCapturePreyOptions,
    PredatorPreyGame,
    PredatorPreyHardOptions,
    PredatorPreyMediumOptions,
    PredatorPreyOptions,
    predator_capture_prey_env,
    predator_capture_prey_vector_env,
    predator_prey_env,
    predator_prey_vector_env,
)
from envs.team import TeamEnv
from tests.envs.test_registry import check_team_env
from tests.envs.vector_check import assert_vector_matches_singles

Cell = tuple[int, int]


def placed(cls: type[Any], options: Any, agents: list[Cell], prey: Cell, num_envs: int = 1) -> Any:
    """A game of class `cls` whose every reset puts the agents and the prey on the given cells."""

    class Placed(cls):
        def reset(self, rows: np.ndarray) -> None:
            super().reset(rows)
            self.row[rows] = [r for r, _ in agents]
            self.col[rows] = [c for _, c in agents]
            self.prey_row[rows], self.prey_col[rows] = prey
            self.saw[rows] = self._sees_prey()[rows]

    game = Placed(options, num_envs)
    game.reset(np.ones(num_envs, dtype=bool))
    return game


def window(game: Any, agent: int, channel: int) -> np.ndarray:
    """The (2v+1, 2v+1) window channel of an agent in env 0."""
    dim, w, c = game.dim, game.window, game.channels
    return game.observe().obs[0, agent, 2 * dim : 2 * dim + w * w * c].reshape(w, w, c)[..., channel]


def one_step(game: Any, actions: list[int]) -> Any:
    return game.step(np.array([actions]), np.ones(1, dtype=bool))


# ---------------------------------------------------------------------------------------------- the loop reference


def reference(game: Any, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observation (N, D), mask (N, A) and state (S,) of env b, cell by cell from the module docstring's rules."""
    dim, v, n = game.dim, game.vision, game.n_agents
    het = game.heterogeneous
    pos = [(int(game.row[b, i]), int(game.col[b, i])) for i in range(n)]
    prey = (int(game.prey_row[b]), int(game.prey_col[b]))
    capture = [bool(x) for x in game.is_capture]
    captured = [bool(game.captured[b, i]) for i in range(n)]
    obs, mask = [], []
    for i, (r, c) in enumerate(pos):
        row = [0.0] * (2 * dim)
        row[r], row[dim + c] = 1.0, 1.0
        for dr in range(-v, v + 1):
            for dc in range(-v, v + 1):
                cell = (r + dr, c + dc)
                out = not (0 <= cell[0] < dim and 0 <= cell[1] < dim)
                others = [j for j in range(n) if j != i and pos[j] == cell]
                preds = sum(not capture[j] for j in others)
                caps = sum(capture[j] for j in others)
                values = [float(cell == prey), preds, *([caps] if het else []), float(out)]
                row += [0.0] * len(values) if capture[i] else values
        if het:
            row += [0.0, 1.0] if capture[i] else [1.0, 0.0]
        obs.append(row)
        free = not captured[i] if capture[i] else pos[i] != prey
        moves = [free and r > 0, free and r < dim - 1, free and c > 0, free and c < dim - 1]
        mask.append([1.0, *moves, *([capture[i] and not captured[i]] if het else [])])
    state = []
    for r, c in [*pos, prey]:
        one = [0.0] * (2 * dim)
        one[r], one[dim + c] = 1.0, 1.0
        state += one
    if het:
        state += [float(x) for x in captured]
    return np.array(obs), np.array(mask, dtype=float), np.array(state)


@pytest.mark.parametrize(
    "game",
    [
        PredatorPreyGame(PredatorPreyOptions(n_predators=4, dim=4, vision=0), 8),
        PredatorPreyGame(PredatorPreyOptions(n_predators=4, dim=4, vision=1), 8),
        PredatorPreyGame(PredatorPreyOptions(n_predators=5, dim=5, vision=2), 8),
        PredatorCapturePreyGame(PredatorCapturePreyOptions(n_predators=3, n_capture=2, dim=4, vision=1), 8),
    ],
)
def test_observations_masks_and_state_equal_the_loop_reference(game: Any) -> None:
    game.seed(list(range(game.num_envs)))
    everywhere = np.ones(game.num_envs, dtype=bool)
    game.reset(everywhere)
    rng = np.random.default_rng(0)
    for _ in range(12):  # crowded small grids: agents share cells, stand on the prey, capture
        seen = game.observe()
        for b in range(game.num_envs):
            obs, mask, state = reference(game, b)
            np.testing.assert_array_equal(seen.obs[b], obs)
            np.testing.assert_array_equal(seen.action_mask[b], mask)
            np.testing.assert_array_equal(seen.state[b], state)
        actions = np.where(seen.action_mask > 0, rng.random(seen.action_mask.shape), -1.0).argmax(-1)
        stepped = game.step(actions, everywhere)
        game.reset(stepped.terminated | stepped.truncated)


# ---------------------------------------------------------------------------------------------- rules, by hand


def test_the_window_at_a_corner_and_an_edge_with_vision_1() -> None:
    game = placed(PredatorPreyGame, PredatorPreyOptions(), [(0, 0), (0, 1), (4, 2)], prey=(1, 0))
    prey, others, outside = 0, 1, 2
    np.testing.assert_array_equal(window(game, 0, prey), [[0, 0, 0], [0, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(window(game, 0, others), [[0, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(window(game, 0, outside), [[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(window(game, 1, prey), [[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(window(game, 1, others), [[0, 0, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(window(game, 1, outside), [[1, 1, 1], [0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(window(game, 2, outside), [[0, 0, 0], [0, 0, 0], [1, 1, 1]])
    assert window(game, 2, prey).sum() == 0 and window(game, 2, others).sum() == 0
    obs = game.observe().obs[0, 2]
    assert obs[:5].tolist() == [0, 0, 0, 0, 1] and obs[5:10].tolist() == [0, 0, 1, 0, 0]  # row 4, column 2
    assert game.observe().facts["saw_prey"][0].tolist() == [True, True, False]


def test_the_window_with_vision_0_is_the_own_cell() -> None:
    options = PredatorPreyOptions(vision=0)
    game = placed(PredatorPreyGame, options, [(0, 0), (2, 3), (2, 3)], prey=(2, 3))
    assert game.obs_dim == 2 * 5 + 3
    assert game.observe().obs[0, 0, 10:].tolist() == [0, 0, 0]  # a corner: its own cell is inside the grid
    assert game.observe().obs[0, 1, 10:].tolist() == [1, 1, 0]  # on the prey with one other predator
    assert game.observe().facts["saw_prey"][0].tolist() == [False, True, True]


def test_masks_at_the_edges() -> None:
    game = placed(PredatorPreyGame, PredatorPreyOptions(), [(0, 0), (4, 2), (4, 4)], prey=(2, 2))
    mask = game.observe().action_mask[0]
    assert mask[0].tolist() == [1, 0, 1, 0, 1]  # stay, up, down, left, right
    assert mask[1].tolist() == [1, 1, 0, 1, 1]
    assert mask[2].tolist() == [1, 1, 0, 1, 0]


def test_a_predator_on_the_prey_stays_and_stops_paying() -> None:
    game = placed(PredatorPreyGame, PredatorPreyOptions(), [(2, 1), (0, 0), (4, 4)], prey=(2, 2))
    stepped = one_step(game, [RIGHT, STAY, STAY])
    assert stepped.rewards[0].tolist() == [0.0, -0.05, -0.05] and not stepped.terminated[0]
    assert game.observe().action_mask[0, 0].tolist() == [1, 0, 0, 0, 0]  # only its no-op
    one_step(game, [LEFT, DOWN, STAY])  # a move given to the game anyway is ignored
    assert (game.row[0, 0], game.col[0, 0]) == (2, 2) and (game.row[0, 1], game.col[0, 1]) == (1, 0)


def test_the_on_prey_reward_counts_the_agents_on_the_prey() -> None:
    options = PredatorPreyOptions(on_prey_reward=0.05)
    game = placed(PredatorPreyGame, options, [(2, 1), (1, 2), (4, 4)], prey=(2, 2))
    stepped = one_step(game, [RIGHT, DOWN, STAY])
    np.testing.assert_allclose(stepped.rewards[0], [0.1, 0.1, -0.05])


def test_success_terminates_and_reports_the_capture_step() -> None:
    game = placed(PredatorPreyGame, PredatorPreyOptions(n_predators=2), [(2, 1), (3, 3)], prey=(2, 2))
    env = TeamEnv(BatchedParallelEnv(game))
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.array([RIGHT, UP]))
    assert reward == pytest.approx(-0.025) and not terminated and not info["won"] and info["capture_step"] == 0
    with pytest.raises(ValueError, match="masked out"):
        env.step(np.array([LEFT, LEFT]))  # the predator on the prey has only its no-op
    obs, reward, terminated, truncated, info = env.step(np.array([STAY, LEFT]))
    assert terminated and not truncated and info["won"] and info["capture_step"] == 2 and reward == 0.0
    assert obs["alive"].tolist() == [0.0, 0.0]  # the terminal ends the team


def test_the_time_limit_truncates() -> None:
    options = PredatorPreyOptions(n_predators=2, max_steps=3)
    env = TeamEnv(BatchedParallelEnv(placed(PredatorPreyGame, options, [(0, 0), (4, 4)], prey=(2, 2))))
    env.reset(seed=0)
    for t in range(1, 4):
        obs, reward, terminated, truncated, info = env.step(np.array([STAY, STAY]))
        assert reward == pytest.approx(-0.05) and not terminated and truncated == (t == 3) and not info["won"]
    assert obs["alive"].tolist() == [1.0, 1.0]  # a time limit keeps the final observation for bootstrapping


def test_capture_rules_of_the_heterogeneous_variant() -> None:
    options = PredatorCapturePreyOptions()  # agents 0, 1 predators, agent 2 the capture agent
    game = placed(PredatorCapturePreyGame, options, [(2, 1), (1, 2), (3, 2)], prey=(2, 2))
    seen = game.observe()
    assert seen.action_mask[0, :, CAPTURE].tolist() == [0, 0, 1]  # only the capture agent may capture
    assert seen.obs[0, :, -2:].tolist() == [[1, 0], [1, 0], [0, 1]]  # type one-hot
    assert seen.obs[0, 2, 10:-2].sum() == 0 and seen.obs[0, 2, :10].sum() == 2  # blind: its position only
    assert seen.facts["saw_prey"][0].tolist() == [True, True, False]

    stepped = one_step(game, [STAY, STAY, CAPTURE])  # off the prey: a wasted step
    assert not game.captured.any() and stepped.rewards[0].tolist() == [-0.05] * 3
    stepped = one_step(game, [STAY, STAY, UP])  # on the prey, not captured: still pays
    assert stepped.rewards[0, 2] == -0.05
    mask = game.observe().action_mask[0, 2]
    assert mask.tolist() == [1, 1, 1, 1, 1, 1]  # the mask does not tell a blind agent it stands on the prey
    one_step(game, [STAY, STAY, LEFT])  # its moves are ignored there
    assert (game.row[0, 2], game.col[0, 2]) == (2, 2)
    one_step(game, [CAPTURE, STAY, STAY])  # a predator's capture (masked for it) does nothing
    assert not game.captured.any() and (game.row[0, 0], game.col[0, 0]) == (2, 1)
    stepped = one_step(game, [STAY, STAY, CAPTURE])
    assert game.captured[0].tolist() == [False, False, True] and stepped.rewards[0, 2] == 0.0
    assert not stepped.terminated[0]  # the predators are not on the prey yet
    assert game.observe().action_mask[0, 2].tolist() == [1, 0, 0, 0, 0, 0]
    stepped = one_step(game, [RIGHT, DOWN, STAY])
    assert stepped.terminated[0] and stepped.info["won"][0] and stepped.info["capture_step"][0] == 6
    assert stepped.rewards[0].tolist() == [0.0, 0.0, 0.0]


def test_predators_on_the_prey_without_a_capture_do_not_win() -> None:
    game = placed(PredatorCapturePreyGame, PredatorCapturePreyOptions(), [(2, 1), (1, 2), (2, 3)], prey=(2, 2))
    stepped = one_step(game, [RIGHT, DOWN, LEFT])
    assert not stepped.terminated[0] and stepped.rewards[0].tolist() == [0.0, 0.0, -0.05]
    assert one_step(game, [STAY, STAY, CAPTURE]).terminated[0]


def test_render_draws_every_kind_in_its_colour() -> None:
    game = placed(PredatorCapturePreyGame, PredatorCapturePreyOptions(), [(0, 0), (4, 4), (1, 3)], prey=(2, 2))
    env = TeamEnv(BatchedParallelEnv(game, render_mode="rgb_array"))
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (5 * 32, 5 * 32, 3)
    colours = {tuple(x) for x in frame.reshape(-1, 3).tolist()}
    assert {(220, 40, 40), (60, 120, 255), (255, 160, 0)} <= colours


# ---------------------------------------------------------------------------------------------- the faces


def _check_vector_equals_singles(make_vector: Any, make_single: Any, options: Any, history: int) -> None:
    b = 4
    vector = make_vector(options, b, "mean", True, history)
    singles = [TeamEnv(make_single(options), use_state=True, history=history) for _ in range(b)]

    def facts(vector_info: dict, i: int, single_info: dict) -> None:
        assert bool(vector_info["won"][i]) == single_info["won"]
        assert vector_info["capture_step"][i] == single_info["capture_step"]
        saw = single_info.get("agent_info", {}).get("saw_prey", single_info.get("saw_prey"))
        np.testing.assert_array_equal(vector_info["saw_prey"][i], np.broadcast_to(saw, (options_agents(options),)))

    stepped = assert_vector_matches_singles(vector, singles, 60, info=facts)
    assert any(info["won"] for info in stepped)  # successes among the compared steps


def options_agents(options: Any) -> int:
    return options.n_predators + getattr(options, "n_capture", 0)


@pytest.mark.parametrize("history", [0, 2])
def test_the_vector_env_equals_single_team_envs(history: int) -> None:
    options = PredatorPreyOptions(n_predators=2, dim=3, max_steps=6)
    _check_vector_equals_singles(predator_prey_vector_env, predator_prey_env, options, history)


def test_the_heterogeneous_vector_env_equals_single_team_envs() -> None:
    options = PredatorCapturePreyOptions(n_predators=1, n_capture=1, dim=3, max_steps=8)
    _check_vector_equals_singles(predator_capture_prey_vector_env, predator_capture_prey_env, options, 0)


@pytest.mark.parametrize("make", [predator_prey_env, predator_capture_prey_env])
def test_the_parallel_face_passes_pettingzoos_api_test(make: Any) -> None:
    options = PredatorPreyOptions() if make is predator_prey_env else PredatorCapturePreyOptions()
    parallel_api_test(make(options), num_cycles=40)


@pytest.mark.parametrize("make", [predator_prey_env, predator_capture_prey_env])
def test_the_team_env_passes_gymnasiums_checks(make: Any) -> None:
    options = PredatorPreyOptions() if make is predator_prey_env else PredatorCapturePreyOptions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unbounded observation boxes only warn
        check_team_env(TeamEnv(make(options), use_state=True))


# ---------------------------------------------------------------------------------------------- options


def test_the_ready_sizes_are_the_published_settings() -> None:
    sizes = {name: cls() for name, cls in PREDATOR_PREY_SIZES.items()}
    got = {name: (o.n_predators, o.dim, o.vision, o.max_steps) for name, o in sizes.items()}
    assert got == {"5x5": (3, 5, 1, 20), "10x10": (5, 10, 1, 40), "20x20": (10, 20, 1, 80)}
    assert all(o.step_penalty == -0.05 and o.on_prey_reward == 0.0 for o in sizes.values())
    medium = options_from_mapping(PredatorPreyMediumOptions, {"vision": 0}, env_name="predator_prey_10x10")
    assert (medium.n_predators, medium.dim, medium.vision) == (5, 10, 0)
    assert predator_prey_vector_env(PredatorPreyHardOptions(), 2, "sum", False, 0).single_action_space.shape == (10,)


@pytest.mark.parametrize(
    ("cls", "values", "match"),
    [
        (PredatorPreyOptions, {"n_predators": 0}, r"env\.options\.n_predators must be in \[1, 1024\].*, got 0"),
        (PredatorPreyOptions, {"n_predators": 4, "dim": 2}, r"env\.options\.dim must be >= 3 \(dim\^2 cells for 4"),
        (PredatorPreyOptions, {"vision": 5}, r"env\.options\.vision must be in \[0, dim - 1 = 4\], got 5"),
        (PredatorPreyOptions, {"vision": -1}, r"env\.options\.vision must be in \[0, dim - 1 = 4\], got -1"),
        (PredatorPreyOptions, {"max_steps": 0}, r"env\.options\.max_steps must be >= 1, got 0"),
        (PredatorPreyOptions, {"step_penalty": float("nan")}, r"env\.options\.step_penalty must be finite"),
        (PredatorCapturePreyOptions, {"n_capture": 0}, r"env\.options\.n_capture must be in \[1, 1024\].*, got 0"),
        (PredatorCapturePreyOptions, {"on_prey_reward": float("inf")}, r"env\.options\.on_prey_reward must be finite"),
    ],
)
def test_out_of_range_options_name_the_key(cls: type, values: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**values)


def test_wrong_option_types_name_the_key() -> None:
    with pytest.raises(TypeError, match=r"env\.options\.n_predators must be int, got True of type bool"):
        PredatorPreyOptions(n_predators=True)
    with pytest.raises(TypeError, match=r"env\.options\.dim must be int, got '5' of type str"):
        PredatorCapturePreyOptions(dim="5")  # type: ignore[arg-type]
    options = PredatorPreyOptions(step_penalty=-1)
    assert isinstance(options.step_penalty, float) and options.step_penalty == -1.0
