"""`BattleEnv`: a MAgent2 battle in which one side learns and the other follows a fixed policy (issue 7).

The learning side ("red", on the left) is exposed as a PettingZoo ParallelEnv of its own agents only, so that
`TeamEnv` adapts it like any other env; the opposing side ("blue") is stepped inside, by a fixed policy:

- "random":   a uniformly random action per agent and step;
- "scripted": each agent attacks its nearest enemy when that enemy is in an adjacent cell, and otherwise takes
              the move that brings it closest to that enemy. `opponent_epsilon` mixes in random actions.

Facts of magent2 0.3.4 used here (battle_v4; checked against the engine in tests/envs/test_magent.py):

- 21 actions: 13 moves (offsets within distance 2, ordered by y then x; magent2's action 6 is the move (0, 0),
  i.e. stay) and 8 attacks on the adjacent cells (ordered by y then x). Agents have 10 HP, an attack takes 2,
  0.1 HP is regained per step. Rewards per agent: +5 per kill, `attack_opponent_reward` per hit on an enemy,
  plus `step_reward`, `attack_penalty` and `dead_penalty`.
- Observation per agent (13, 13, 5) in [0, 2]: the agent's view (radius 6) with channels wall, own team
  presence, own team HP, other team presence, other team HP. `state()` is (map, map, 5) of the whole map.

Decisions written down here:

- Actions 0 and 6 are swapped with respect to magent2 so that action 0 is the no-op ("stay"), the convention
  `TeamEnv` and SMAC share (a dead agent's only available action is 0). Every other index is magent2's.
- Observations stay spatial here and are flattened by `TeamEnv` (row-major, (H, W, C)), not pooled: an attack
  targets one of the 8 neighbouring cells, so the policy must know *where* an enemy is; pooling over the view
  would throw that away. 845 values per agent is small next to the team's batch; a convolutional encoder can
  view each row back as (13, 13, 5).
- Team sizes are an option (`n_agents` per side, any size; magent2's own battle derives them from the map).
  Each side is a block of agents two cells apart, the fronts six cells apart (within view range), as in
  battle_v4. `map_size=None` scales the map with the team: at least the block layout plus a margin, and at the
  density of battle_v4 (162 agents on 45 x 45, 8% of the cells).
- The episode ends when one side has no agent left (terminated), or after `max_cycles` steps (truncated).
  Every step's info carries the team facts `dead_allies`, `dead_enemies` (counts so far) and `won`: False
  until the last step, where it is True when the learning side has more survivors than the opponent (all
  enemies killed, or ahead at the time limit). `TeamEnv` passes these through as team info.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.options import check_field_types, require, require_agents, require_grid
from envs.parallel import ParallelStep

OPPONENTS = ("random", "scripted")
"""Valid values of `BattleOptions.opponent`."""

N_ACTIONS = 21
"""magent2 battle: 13 moves and 8 attacks."""

MOVE_OFFSETS = np.array(
    [(0, -2), (-1, -1), (0, -1), (1, -1), (-2, 0), (-1, 0), (0, 0), (1, 0), (2, 0), (-1, 1), (0, 1), (1, 1), (0, 2)]
)
"""(dx, dy) of magent2's move actions 0..12 (in the engine's own indices)."""

ATTACK_OFFSETS = np.array([(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)])
"""(dx, dy) of the cell attacked by magent2's actions 13..20."""

MAGENT_STAY = 6
"""magent2's index of the move (0, 0)."""

TO_MAGENT = np.arange(N_ACTIONS)
TO_MAGENT[[0, MAGENT_STAY]] = TO_MAGENT[[MAGENT_STAY, 0]]
"""Our action index -> magent2's (0 and 6 swapped, so that our 0 is the no-op)."""

FRONT_GAP = 6
"""Cells between the two sides' front columns at the start (battle_v4 places them a similar distance apart)."""

BATTLE_DENSITY = 0.08
"""Fraction of the map's cells occupied at the start of battle_v4 (162 agents on 45 x 45)."""


def block_shape(n_agents: int) -> tuple[int, int]:
    """(columns, rows) of the near-square block one side starts in."""
    columns = math.ceil(math.sqrt(n_agents))
    return columns, math.ceil(n_agents / columns)


def min_map_size(n_agents: int) -> int:
    """The smallest square map on which two blocks of `n_agents` fit inside the border walls."""
    columns, rows = block_shape(n_agents)
    # Left block: back column at size//2 - FRONT_GAP//2 - 2(columns - 1) >= 1; right block: back column at
    # size//2 + FRONT_GAP//2 + 2(columns - 1) <= size - 2; rows: 2 * rows - 1 cells inside 1..size-2.
    size = 12  # magent2's minimum
    while not _fits(size, columns, rows):
        size += 1
    return size


def _fits(size: int, columns: int, rows: int) -> bool:
    half = FRONT_GAP // 2
    left_back = size // 2 - half - 2 * (columns - 1)
    right_back = size // 2 + half + 2 * (columns - 1)
    return left_back >= 1 and right_back <= size - 2 and 2 * rows - 1 <= size - 2


def default_map_size(n_agents: int) -> int:
    """The map used when `map_size` is None: battle_v4's density, never smaller than the layout needs."""
    return max(min_map_size(n_agents), math.ceil(math.sqrt(2 * n_agents / BATTLE_DENSITY)))


def start_positions(n_agents: int, map_size: int, side: int) -> list[list[int]]:
    """[x, y, 0] of each agent of `side` (0 left, 1 right), front column first."""
    _, rows = block_shape(n_agents)
    half = FRONT_GAP // 2
    top = (map_size - (2 * rows - 1)) // 2
    positions = []
    for k in range(n_agents):
        column, row = divmod(k, rows)
        x = map_size // 2 - half - 2 * column if side == 0 else map_size // 2 + half + 2 * column
        positions.append([x, top + 2 * row, 0])
    return positions


@dataclass(frozen=True)
class BattleOptions:
    """Options of `magent_battle` (`env.options.*` in an experiment config)."""

    n_agents: int = 12
    """Agents per side; the learning team has this many, and so does the opponent."""
    map_size: int | None = None
    """Side of the square map; None scales it with `n_agents` (see `default_map_size`)."""
    opponent: str = "scripted"
    """The opponent's fixed policy: "random" or "scripted" (attack / approach the nearest enemy)."""
    opponent_epsilon: float = 0.0
    """Probability that a scripted opponent agent takes a random action instead (0 with "random": moot)."""
    max_cycles: int = 200
    """Steps per episode before truncation."""
    step_reward: float = -0.005
    """Reward of every agent every step (battle_v4's default)."""
    dead_penalty: float = -0.1
    """Reward of an agent when it is killed."""
    attack_penalty: float = -0.1
    """Reward of an agent for every attack it makes."""
    attack_opponent_reward: float = 0.2
    """Reward of an agent for every attack that hits an enemy (a kill adds 5)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require_agents("n_agents", self.n_agents)
        if self.map_size is not None:
            need = min_map_size(self.n_agents)
            expected = f">= {need} for {self.n_agents} agents per side, or null"
            require(self.map_size >= need, "map_size", expected, self.map_size)
            require_grid("map_size", self.map_size)
        require(self.opponent in OPPONENTS, "opponent", f"one of {', '.join(OPPONENTS)}", self.opponent)
        require(0.0 <= self.opponent_epsilon <= 1.0, "opponent_epsilon", "in [0, 1]", self.opponent_epsilon)
        require(self.max_cycles >= 1, "max_cycles", ">= 1", self.max_cycles)

    @property
    def resolved_map_size(self) -> int:
        """`map_size`, or the scaled default."""
        return self.map_size if self.map_size is not None else default_map_size(self.n_agents)


def _sized_battle(options: BattleOptions, render_mode: str | None) -> Any:
    """magent2's battle_v4 parallel env with `n_agents` per side placed by `start_positions`.

    Subclasses battle_v4's env class (not public API; magent2 is pinned in constraints.txt, and the tests check
    team sizes, placement and action offsets against the engine) to keep its reward rules and agent type exactly.
    """
    from magent2.environments.battle import battle

    n, size = options.n_agents, options.resolved_map_size

    class SizedBattle(battle._parallel_env):
        def generate_map(self) -> None:
            # Called by magent2 on construction and on every reset.
            for side, handle in enumerate(self.handles):
                self.env.add_agents(handle, method="custom", pos=start_positions(n, size, side))

    reward_args = {
        "step_reward": options.step_reward,
        "dead_penalty": options.dead_penalty,
        "attack_penalty": options.attack_penalty,
        "attack_opponent_reward": options.attack_opponent_reward,
    }
    return SizedBattle(size, False, reward_args, options.max_cycles, False, render_mode)


class BattleEnv(ParallelEnv):
    """The learning side of a MAgent2 battle as a ParallelEnv; the other side is stepped inside (module doc)."""

    metadata: ClassVar[dict[str, Any]] = {
        "name": "magent_battle",
        "render_modes": ["rgb_array"],
        "render_fps": 5,
        "is_parallelizable": True,
    }

    def __init__(self, options: BattleOptions | None = None, render_mode: str | None = None) -> None:
        self.options = options if options is not None else BattleOptions()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported by magent_battle; expected None or 'rgb_array'"
            )
        self.render_mode = render_mode
        self._battle = _sized_battle(self.options, render_mode)
        n = self.options.n_agents
        inner = list(self._battle.possible_agents)
        if inner[:n] != [f"red_{i}" for i in range(n)] or len(inner) != 2 * n:
            raise RuntimeError(f"magent2 built teams {inner}; expected red_0..red_{n - 1} and blue_0..blue_{n - 1}")
        self.possible_agents = inner[:n]
        self._opponents = inner[n:]
        self.agents: list[str] = []
        # PettingZoo requires the same space object on every call.
        self._observation_space = self._battle.observation_space(self.possible_agents[0])
        self._action_space: spaces.Space[Any] = spaces.Discrete(N_ACTIONS)
        self.state_space = self._battle.state_space
        self._red, self._blue = self._battle.handles
        self._rng = np.random.default_rng()

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """Box(0, 2, (13, 13, 5)) float32: the agent's view (module docstring)."""
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Space[Any]:
        """Discrete(21); 0 is stay (magent2's 6), see the module docstring."""
        return self._action_space

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
        """Place both sides again; a `seed` reseeds the engine and the opponent policy, `options` are ignored."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        raw_obs, _ = self._battle.reset(seed=seed)
        self.agents = self.possible_agents[:]
        facts = {"won": False, "dead_allies": 0, "dead_enemies": 0}
        return {a: raw_obs[a] for a in self.agents}, {a: dict(facts) for a in self.agents}

    def step(self, actions: dict[str, Any]) -> ParallelStep[np.ndarray]:
        """Step the learning side with `actions` (one per live agent) and the opponent with its fixed policy."""
        if not self.agents:
            raise RuntimeError("BattleEnv.step() called before reset() or after the episode ended")
        raw_actions = self._check_actions(actions)
        raw_actions.update(self._opponent_actions())
        raw_obs, raw_rewards, raw_terms, raw_truncs, _ = self._battle.step(raw_actions)

        live = self.agents
        n = self.options.n_agents
        allies_left = int(self._battle.env.get_num(self._red))
        enemies_left = int(self._battle.env.get_num(self._blue))
        over = allies_left == 0 or enemies_left == 0
        terminations = {a: bool(raw_terms[a]) or over for a in live}
        truncations = {a: bool(raw_truncs[a]) and not terminations[a] for a in live}
        done = over or any(truncations.values())
        facts = {
            "won": done and allies_left > enemies_left,
            "dead_allies": n - allies_left,
            "dead_enemies": n - enemies_left,
        }
        observations = {a: raw_obs[a] for a in live}
        rewards = {a: float(raw_rewards[a]) for a in live}
        infos = {a: dict(facts) for a in live}
        self.agents = [] if done else [a for a in live if not terminations[a]]
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """(map, map, 5) float32: walls, then presence and HP of each side (the layout of magent2's state()).

        Built here rather than by magent2's `state()`, which fails once a side has no agent left (0.3.4).
        """
        state = self._battle.base_state.copy()  # (map, map, 5), walls in channel 0
        grid = self._battle.env
        for side, handle in enumerate((self._red, self._blue)):
            if grid.get_num(handle) == 0:
                continue
            x, y = grid.get_pos(handle).T
            view, _ = grid.get_observation(handle)  # (M, 13, 13, 5); the agent's own cell is the centre
            centre = view.shape[1] // 2
            state[x, y, 1 + 2 * side] = 1.0
            state[x, y, 2 + 2 * side] = view[:, centre, centre, 2]  # own-team HP channel at the agent itself
        return state

    def render(self) -> np.ndarray | None:
        """An rgb frame of the whole map (both sides) with `render_mode="rgb_array"`."""
        if self.render_mode is None:
            return None
        return np.asarray(self._battle.render())

    def close(self) -> None:
        """Close magent2's renderer, if any."""
        self._battle.close()

    # ------------------------------------------------------------------ internals

    def _check_actions(self, actions: dict[str, Any]) -> dict[str, int]:
        """Our actions of the live agents, validated, in magent2's indices."""
        out = {}
        for agent in self.agents:
            if agent not in actions:
                raise ValueError(f"no action for live agent {agent!r}; actions were given for {sorted(actions)}")
            act = actions[agent]
            if isinstance(act, bool | np.bool_) or not isinstance(act, int | np.integer) or not 0 <= act < N_ACTIONS:
                raise ValueError(
                    f"action {act!r} for agent {agent!r} is invalid; expected an int in 0..{N_ACTIONS - 1}"
                )
            out[agent] = int(TO_MAGENT[act])
        return out

    def _opponent_actions(self) -> dict[str, int]:
        """The opponent's actions (magent2 indices) by name, from the current positions."""
        grid = self._battle.env
        ids = grid.get_agent_id(self._blue)
        names = [self._battle.possible_agents[i] for i in ids]
        if not names:
            return {}
        if self.options.opponent == "random":
            chosen = self._rng.integers(N_ACTIONS, size=len(names))
        else:
            chosen = scripted_actions(grid.get_pos(self._blue), grid.get_pos(self._red))
            if self.options.opponent_epsilon > 0:
                explore = self._rng.random(len(names)) < self.options.opponent_epsilon
                chosen = np.where(explore, self._rng.integers(N_ACTIONS, size=len(names)), chosen)
        return dict(zip(names, chosen.tolist(), strict=True))


NEAREST_CANDIDATES = 16
"""Enemies the k-d tree returns per agent; only when all of them are as near as the nearest (a tie that may go on
past them) does that agent fall back to comparing every enemy."""


def nearest_enemy(own: np.ndarray, enemies: np.ndarray) -> np.ndarray:
    """For each of M agents, the index of its nearest enemy; of equally near ones, the lowest index.

    A k-d tree (scipy's cKDTree) instead of all M x K distances: O((M + K) log K) rather than O(M K), which at
    1,000 agents a side was most of an env step. Exactly the all-pairs argmin: positions are integers, so equal
    squared distances give equal floats, and ties are broken by index among the candidates.

    Args:
        own: (M, 2) positions; enemies: (K, 2) positions, K >= 1.

    Returns:
        (M,) int64 indices into `enemies`.
    """
    from scipy.spatial import cKDTree

    k = min(NEAREST_CANDIDATES, len(enemies))
    dist, index = cKDTree(enemies).query(own, k=k)
    dist, index = dist.reshape(len(own), k), index.reshape(len(own), k)  # k == 1 drops the axis
    tied = dist == dist[:, :1]  # sorted ascending: the first column is the nearest distance
    nearest = np.where(tied, index, len(enemies)).min(1)
    spill = np.flatnonzero(tied[:, -1]) if k < len(enemies) else np.zeros(0, dtype=np.int64)
    if len(spill):  # every candidate as near as the nearest: more may tie beyond them
        squared = ((enemies[None, :, :] - own[spill, None, :]) ** 2).sum(-1)  # (S, K)
        nearest[spill] = squared.argmin(1)
    return nearest.astype(np.int64)


def scripted_actions(own: np.ndarray, enemies: np.ndarray) -> np.ndarray:
    """The scripted policy: attack the nearest enemy if adjacent, else move to get closest to it.

    Args:
        own: (M, 2) positions (x, y) of the acting side's agents.
        enemies: (K, 2) positions of the other side's agents.

    Returns:
        (M,) magent2 action indices; "stay" for everyone when there is no enemy.
    """
    if len(enemies) == 0:
        return np.full(len(own), MAGENT_STAY, dtype=np.int64)
    d = enemies[nearest_enemy(own, enemies)] - own  # (M, 2), towards the target
    # Move: the offset that leaves the smallest squared distance to the target (stay included).
    remaining = ((d[:, None, :] - MOVE_OFFSETS[None, :, :]) ** 2).sum(-1)  # (M, 13)
    actions = remaining.argmin(1)
    # Attack: an enemy in one of the 8 neighbouring cells; attack actions follow the 13 moves.
    adjacent = np.abs(d).max(1) == 1
    match = (d[:, None, :] == ATTACK_OFFSETS[None, :, :]).all(-1)  # (M, 8)
    attacks = len(MOVE_OFFSETS) + match.argmax(1)
    return np.where(adjacent, attacks, actions).astype(np.int64)


def magent_battle(options: BattleOptions, render_mode: str | None = None) -> BattleEnv:
    """The registry factory of `magent_battle`."""
    return BattleEnv(options, render_mode=render_mode)
