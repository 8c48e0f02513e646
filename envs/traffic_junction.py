"""`traffic_junction`: IC3Net's traffic junction (easy / medium / hard) as a numpy `BatchedGame` of B envs.

Sources: CommNet (Sukhbaatar, Szlam, Fergus 2016, "Learning multiagent communication with backpropagation")
introduced the task (14 x 14, 4 entries, 3 routes, at most 10 cars, -10 per collision, -0.01 tau per step, a
failure if any collision); IC3Net (Singh, Jain, Sukhbaatar 2019, ICLR, arXiv:1812.09755) defined the easy, medium
and hard versions. The values below are those of IC3Net's official code:
github.com/IC3Net/IC3Net README.md (the command line of each version: --nagents, --dim, --max_steps,
--add_rate_min/max, --difficulty) and ic3net-envs/ic3net_envs/{traffic_junction_env,traffic_helper}.py (roads,
entry and exit cells, routes, rewards). Nothing here is copied from that code.

| version | grid    | entries | routes / entry | cars N | p_arrive | steps | roads                                  |
| ------- | ------- | ------- | -------------- | ------ | -------- | ----- | -------------------------------------- |
| easy    | 7 x 7   | 2       | 1 (straight)   | 5      | 0.3      | 20    | two one-way roads crossing once        |
| medium  | 14 x 14 | 4       | 3              | 10     | 0.2      | 40    | two two-way roads, one 2 x 2 junction  |
| hard    | 18 x 18 | 8       | 7              | 20     | 0.05     | 80    | four two-way roads, four junctions     |

(IC3Net's easy runs with --dim 6, which its env makes odd: 7 x 7. p_arrive is the final value of IC3Net's
curriculum, add_rate_max: 0.1 -> 0.3, 0.05 -> 0.2, 0.02 -> 0.05; the README's medium line reads "0.02", below its
own minimum 0.05: a typo for 0.2, the env's default --add_rate_max. The curriculum is left to the config: set
`arrival_prob`.)

Rules (one step):

1. Every car on the road acts: 0 brake (stay; the no-op, as every team env here), 1 gas (advance one cell along
   its route). Its time on the road tau grows by 1 whatever it does.
2. A car that presses gas on the last cell of its route leaves: its slot becomes inactive (Observed.alive False)
   and free for a car arriving on a later step (not on this one, unlike IC3Net: so a slot always shows at least
   one empty step between two cars, and a history window never runs from one car into the next). A car that
   leaves gets no reward on that step (it is no longer on the road).
3. Arrivals: each entry in turn (fixed order) adds a car with probability `arrival_prob`, while fewer than N cars
   are on the road: a uniformly drawn free slot gets a uniformly drawn route of that entry, on its first cell, with
   tau = 0. As in IC3Net a car may arrive on a cell that is taken (and so collide at once). A new episode starts
   with an empty road and one arrival round, so that the first observation can already hold cars (IC3Net's
   first step has no car at all).
4. Collisions (IC3Net's rule): cars that share a cell after the step collide; each of them gets
   -`collision_penalty` (10), and the cars drive on (a collision changes nothing else). Two cars that stay
   together collide again on the next step. Cars never swap cells head-on: lanes are one-way and the junction's
   cells are crossed in one rotating order, so sharing a cell is the only way to meet.
5. Reward of each car on the road: -`time_penalty` * tau (IC3Net: -0.01 tau) plus its collision penalty; 0 for
   an empty slot. A car that has just arrived has tau = 0.
6. There is no terminal: the episode is truncated after `episode_len` steps. Success = no collision in the
   episode.

Routes: right-hand traffic. A car enters on the edge cell of its lane and drives straight until it reaches a
junction, where it goes straight (crossing its 2 cells), turns right (on the first junction cell) or left (after
the second junction cell, crossing 3); at a second junction (hard) it makes a second such choice, and goes
straight through any further one. Medium: straight / right / left from each of the 4 entries (12 routes); hard: a
right or left turn that leads straight to the edge counts once, the others meet a second junction and branch 3
ways, giving 7 routes from each of the 8 entries (56), as in IC3Net. Route ids run entry by entry (easy: top,
left; medium: top, bottom, left, right; hard: top-left, top-right, left-top, left-bottom, bottom-left,
bottom-right, right-top, right-bottom), within an entry straight, right, left (then the second choice likewise).

Observation of a car on the road (vision v, window of W = (2v+1)^2 cells around it, row-major), float32:
``[last_gas (1), route one-hot (R), row / (G-1), col / (G-1), (cell one-hot over the P road cells, with
cell_onehot), window road flags (W), window counts of *other* cars (W), (slot one-hot (N), with agent_id)]``.
This is IC3Net's "scalar" vocabulary (coordinates; road and car channels per visible cell) with the route as a
one-hot rather than a scaled id; `cell_onehot` adds the cell's one-hot of its "bool" vocabulary (medium: 52 more
inputs, so off by default: route and coordinates already fix the cell). Vision 0 (the default, IC3Net's setting):
the car knows its route, its position and its last action, and its one-cell window shows whether another car
shares its cell; nothing of the cars about to cross its path. An empty slot's row is zero.

Global state (for centralised critics), per slot: ``[active, row / (G-1), col / (G-1), tau / episode_len,
route one-hot (R)]``, then ``t / episode_len``.

Team facts (`Stepped.info`, every step): ``won`` (no collision so far in this episode; the episode's success is
its value at the last step) and ``collisions`` (collisions so far in this episode, counted as cells shared by two
or more cars at the end of a step). Per-car fact (`Observed.facts`): ``at_risk``, another car can share its
cell after the next step for some pair of actions (now or next cell of one equals now or next cell of the
other): the moments when a car needs what it cannot see, the other car's intention.

Randomness: env b draws uniforms from `self.rngs[b]` in blocks of `_BLOCK_STEPS` arrival rounds (3 uniforms per
entry and round: arrival, route, slot), consumed in order, so env b of a batch draws exactly as a batch of one
seeded alike, and the Python loop over envs runs once per block rather than every step.

Speed: everything a car sees that depends on its (route, progress) only is gathered from a table, and cars are
counted per cell with one bincount over all envs (speed: docs/BENCHMARKS.md, "Figures behind code choices").
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from envs.batched import BatchedGame, BatchedParallelEnv, BatchedTeamEnv, Observed, Stepped
from envs.options import check_field_types, require, require_agents, require_grid

BRAKE, GAS = 0, 1
"""Actions: brake (stay, the no-op) and gas (advance one cell)."""


@dataclass(frozen=True)
class JunctionPreset:
    """The published settings of one version (module docstring)."""

    grid_size: int
    max_cars: int
    arrival_prob: float
    episode_len: int


PRESETS: dict[str, JunctionPreset] = {
    "easy": JunctionPreset(grid_size=7, max_cars=5, arrival_prob=0.3, episode_len=20),
    "medium": JunctionPreset(grid_size=14, max_cars=10, arrival_prob=0.2, episode_len=40),
    "hard": JunctionPreset(grid_size=18, max_cars=20, arrival_prob=0.05, episode_len=80),
}


@dataclass(frozen=True)
class TrafficJunctionOptions:
    """Options of the `traffic_junction` env (`env.options.*`); a knob left None takes the version's value."""

    difficulty: str = "medium"
    """The version: "easy", "medium" or "hard" (roads, entries, routes and the defaults of the knobs below)."""
    grid_size: int | None = None
    """Side G of the grid; easy: odd >= 3, medium: even >= 4, hard: a multiple of 3 >= 9 (IC3Net's limits)."""
    max_cars: int | None = None
    """N, the car slots (agents); at most N cars are on the road."""
    arrival_prob: float | None = None
    """Probability that a car arrives at each entry at each step, in [0, 1]."""
    episode_len: int | None = None
    """Steps per episode; the episode is truncated after them."""
    vision: int = 0
    """A car sees the (2v+1)^2 cells around it (0: its own cell only, IC3Net's setting)."""
    cell_onehot: bool = False
    """Add a one-hot of the car's cell over the road cells (IC3Net's "bool" vocabulary) to its coordinates."""
    agent_id: bool = False
    """Append a one-hot of the car's slot to its observation."""
    time_penalty: float = 0.01
    """A car on the road gets -time_penalty * tau per step, tau its steps on the road (IC3Net: 0.01)."""
    collision_penalty: float = 10.0
    """A car that shares its cell with another after a step gets -collision_penalty (IC3Net: 10)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require(self.difficulty in PRESETS, "difficulty", f"one of {sorted(PRESETS)}", self.difficulty)
        p = self.preset()
        g = p.grid_size
        if self.difficulty == "easy":
            require(g >= 3 and g % 2 == 1, "grid_size", "odd and >= 3 for easy", g)
        elif self.difficulty == "medium":
            require(g >= 4 and g % 2 == 0, "grid_size", "even and >= 4 for medium", g)
        else:
            require(g >= 9 and g % 3 == 0, "grid_size", "a multiple of 3 and >= 9 for hard", g)
        require_grid("grid_size", g)
        require_agents("max_cars", p.max_cars)
        require(0.0 <= p.arrival_prob <= 1.0, "arrival_prob", "in [0, 1]", p.arrival_prob)
        require(p.episode_len >= 1, "episode_len", ">= 1", p.episode_len)
        require(0 <= self.vision < g, "vision", f">= 0 and < grid_size ({g})", self.vision)
        require(self.time_penalty >= 0.0, "time_penalty", ">= 0 (the penalty's size)", self.time_penalty)
        require(self.collision_penalty >= 0.0, "collision_penalty", ">= 0 (the penalty's size)", self.collision_penalty)

    def preset(self) -> JunctionPreset:
        """The settings in force: the version's, overridden by the knobs that are set."""
        base = PRESETS[self.difficulty]
        return JunctionPreset(
            grid_size=base.grid_size if self.grid_size is None else self.grid_size,
            max_cars=base.max_cars if self.max_cars is None else self.max_cars,
            arrival_prob=base.arrival_prob if self.arrival_prob is None else float(self.arrival_prob),
            episode_len=base.episode_len if self.episode_len is None else self.episode_len,
        )


SOUTH, NORTH, EAST, WEST = (1, 0), (-1, 0), (0, 1), (0, -1)
"""Headings (d_row, d_col)."""
STRAIGHT, RIGHT, LEFT = "straight", "right", "left"


def _layout(difficulty: str, g: int) -> tuple[np.ndarray, list[tuple[str, tuple[int, int], tuple[int, int]]]]:
    """The road cells (G, G) bool and the entries (name, first cell, heading), right-hand traffic."""
    road = np.zeros((g, g), dtype=bool)
    if difficulty == "easy":  # one-way: southward in the middle column, eastward in the middle row
        m = g // 2
        road[m, :] = road[:, m] = True
        return road, [("top", (0, m), SOUTH), ("left", (m, 0), EAST)]
    if difficulty == "medium":  # rows m-1 westward, m eastward; columns m-1 southward, m northward
        m = g // 2
        road[m - 1 : m + 1, :] = road[:, m - 1 : m + 1] = True
        top, bottom = ("top", (0, m - 1), SOUTH), ("bottom", (g - 1, m), NORTH)
        return road, [top, bottom, ("left", (m, 0), EAST), ("right", (m - 1, g - 1), WEST)]
    a, b = g // 3, 2 * g // 3  # hard: roads on rows / columns a-2, a-1 and b, b+1
    for lo in (a - 2, b):
        road[lo : lo + 2, :] = road[:, lo : lo + 2] = True
    return road, [
        ("top-left", (0, a - 2), SOUTH),
        ("top-right", (0, b), SOUTH),
        ("left-top", (a - 1, 0), EAST),
        ("left-bottom", (b + 1, 0), EAST),
        ("bottom-left", (g - 1, a - 1), NORTH),
        ("bottom-right", (g - 1, b + 1), NORTH),
        ("right-top", (a - 2, g - 1), WEST),
        ("right-bottom", (b, g - 1), WEST),
    ]


def _drive(
    junction: np.ndarray, start: tuple[int, int], heading: tuple[int, int], turns: list[str]
) -> tuple[list[tuple[int, int]], int]:
    """The cells from `start` to the edge making `turns[k]` at the k-th junction met (straight beyond), and how
    many junctions were met."""
    g = junction.shape[0]
    (r, c), (dr, dc) = start, heading
    cells, met, inside = [start], 0, 0
    while True:
        r, c = r + dr, c + dc
        if not (0 <= r < g and 0 <= c < g):
            return cells, met
        cells.append((r, c))
        if not junction[r, c]:
            inside = 0
            continue
        met += inside == 0
        inside += 1
        turn = turns[met - 1] if met <= len(turns) else STRAIGHT
        if turn == RIGHT and inside == 1:
            dr, dc = dc, -dr
        elif turn == LEFT and inside == 2:
            dr, dc = -dc, dr


def junction_routes(difficulty: str, g: int) -> tuple[np.ndarray, list[str], list[list[tuple[int, int]]], list[int]]:
    """The road (G, G), the entry names, every route's cells (in route-id order) and each route's entry index."""
    road, entries = _layout(difficulty, g)
    rows, cols = road.sum(1) == g, road.sum(0) == g  # the full-length roads
    junction = rows[:, None] & cols[None, :]
    routes: list[list[tuple[int, int]]] = []
    owner: list[int] = []
    for e, (_, start, heading) in enumerate(entries):
        firsts = [STRAIGHT] if difficulty == "easy" else [STRAIGHT, RIGHT, LEFT]
        for first in firsts:
            cells, met = _drive(junction, start, heading, [first])
            found = [cells]
            if met > 1:  # a second junction: a second choice
                found = [_drive(junction, start, heading, [first, then])[0] for then in (STRAIGHT, RIGHT, LEFT)]
            routes += found
            owner += [e] * len(found)
    for cells in routes:  # a broken layout is a bug here, not a user error
        assert all(road[cell] for cell in cells), f"route {cells} leaves the road"
    return road, [name for name, _, _ in entries], routes, owner


class TrafficJunctionGame(BatchedGame):
    """B traffic junctions advanced together (module docstring). Arrays: ``active`` (B, N) bool, ``route``,
    ``progress`` (index along the route), ``tau`` (steps on the road) (B, N) int64, ``last_gas`` (B, N) bool,
    ``t``, ``collisions`` (B,) int64, ``failed`` (B,) bool."""

    fact_names: ClassVar[tuple[str, ...]] = ("at_risk",)

    agent_prefix: ClassVar[str] = "car"
    name: ClassVar[str] = "traffic_junction"
    CELL = 12
    """Pixels per cell in `render`."""
    _BLOCK_STEPS = 64
    """Arrival rounds drawn at once per env (module docstring: randomness)."""

    def __init__(self, options: TrafficJunctionOptions | None = None, num_envs: int = 1) -> None:
        super().__init__(num_envs)
        self.options = options = options if options is not None else TrafficJunctionOptions()
        preset = options.preset()
        g, n, b = preset.grid_size, preset.max_cars, num_envs
        self.grid_size, self.arrival_prob, self.episode_len = g, preset.arrival_prob, preset.episode_len
        self.road, self.entry_names, self.routes, owner = junction_routes(options.difficulty, g)
        self.route_entry = np.asarray(owner, dtype=np.int64)  # (R,)
        self.route_len = np.asarray([len(cells) for cells in self.routes], dtype=np.int64)  # (R,)
        width = int(self.route_len.max()) + 1
        self.route_cells = np.asarray(  # (R, L+1) flat cells r*G+c, the last one repeated
            [[r * g + c for r, c in cells + cells[-1:] * (width - len(cells))] for cells in self.routes]
        )
        self._entry_first = np.searchsorted(self.route_entry, np.arange(len(self.entry_names)))  # (E,)
        self._entry_count = np.bincount(self.route_entry)  # (E,)
        self.n_agents, self.n_actions = n, 2
        self._build_tables()
        self.active = np.zeros((b, n), dtype=bool)
        self.route = np.zeros((b, n), dtype=np.int64)
        self.progress = np.zeros((b, n), dtype=np.int64)
        self.tau = np.zeros((b, n), dtype=np.int64)
        self.last_gas = np.zeros((b, n), dtype=bool)
        self.t = np.zeros(b, dtype=np.int64)
        self.collisions = np.zeros(b, dtype=np.int64)
        self.failed = np.zeros(b, dtype=bool)
        self._envs = np.arange(b)
        self._uniforms = np.zeros((b, self._BLOCK_STEPS, 3 * len(self.entry_names)))  # per env: rounds x 3E
        self._round = np.full(b, self._BLOCK_STEPS, dtype=np.int64)  # the next round's row; exhausted: refill
        hues = 0.1 + 0.8 * np.arange(n) / n  # no pure red: red frames a collision
        self._palette = [tuple(int(255 * x) for x in colorsys.hsv_to_rgb(h, 0.75, 1.0)) for h in hues]

    def _build_tables(self) -> None:
        """Sizes, padded cells and the lookup tables of `observe`."""
        g, v, n, b, options = self.grid_size, self.options.vision, self.n_agents, self.num_envs, self.options
        r_count, width = self.route_cells.shape
        # Cells in a grid padded by v on each side (the vision window never leaves it), one grid per env in a row of
        # B grids and a last bin for empty slots, so one bincount counts the cars of every cell of every env.
        gp = g + 2 * v
        rows, cols = np.divmod(self.route_cells, g)
        self._pcells = (rows + v) * gp + (cols + v)  # (R, L+1)
        leaves = np.arange(width)[None, :] + 1 >= self.route_len[:, None]  # gas there leaves the road
        self._pnext = np.where(leaves, -1, np.roll(self._pcells, -1, axis=1))  # (R, L+1), -1: off the road
        self._base, self._empty = np.arange(b)[:, None] * gp * gp, b * gp * gp
        dr, dc = np.meshgrid(np.arange(-v, v + 1), np.arange(-v, v + 1), indexing="ij")
        self._offsets = (dr * gp + dc).reshape(-1)  # (W,)
        w, p_cells = self._offsets.size, int(self.road.sum()) if options.cell_onehot else 0
        o_road = 3 + r_count + p_cells  # obs layout: module docstring
        self._o_cars = o_road + w
        self._o_id = self._o_cars + w
        self.obs_dim = self._o_id + (n if options.agent_id else 0)
        self.state_dim = n * (4 + r_count) + 1
        # What a car sees and what the state says of it that depend on its (route, progress) only, one row per
        # (route, progress) and a last row of zeros for empty slots: one gather writes every row of every env.
        obs = np.zeros((r_count, width, self.obs_dim), dtype=np.float32)
        state = np.zeros((r_count, width, 4 + r_count), dtype=np.float32)
        road_index = np.cumsum(self.road.reshape(-1)) - 1  # flat cell -> index among the road cells
        for i in range(r_count):
            obs[i, :, 1 + i] = state[i, :, 4 + i] = 1.0
            if options.cell_onehot:
                obs[i, np.arange(width), 3 + r_count + road_index[self.route_cells[i]]] = 1.0
        obs[..., 1 + r_count] = state[..., 1] = rows / (g - 1)
        obs[..., 2 + r_count] = state[..., 2] = cols / (g - 1)
        obs[..., o_road : self._o_cars] = np.pad(self.road, v).reshape(-1)[self._pcells[..., None] + self._offsets]
        state[..., 0] = 1.0
        self._width, self._nowhere = width, r_count * width
        self._obs_table = np.concatenate([obs.reshape(self._nowhere, -1), np.zeros_like(obs[0, :1])])
        self._state_table = np.concatenate([state.reshape(self._nowhere, -1), np.zeros_like(state[0, :1])])

    def seed(self, seeds: Sequence[int | None]) -> None:
        super().seed(seeds)
        self._round[:] = self._BLOCK_STEPS  # the new generators draw fresh blocks

    def reset(self, rows: np.ndarray) -> None:
        """An empty road and one arrival round in every env with ``rows[b]``."""
        for array in (self.active, self.last_gas):
            array[rows] = False
        for array in (self.route, self.progress, self.tau):
            array[rows] = 0
        self.t[rows] = self.collisions[rows] = 0
        self.failed[rows] = False
        self._arrive(rows)

    def step(self, actions: np.ndarray, rows: np.ndarray) -> Stepped:
        """Rules 1-5 of the module docstring for the envs with ``rows[b]``; actions (B, N) int."""
        acting = self.active & rows[:, None]
        gas = acting & (actions == GAS)
        self.tau += acting
        self.progress += gas
        self.last_gas = np.where(acting, gas, self.last_gas)
        gone = gas & (self.progress >= self.route_len[self.route])  # finished their route
        self.active &= ~gone
        self._arrive(rows, taken=gone)
        self.t += rows
        here = self._here()
        cars_here = np.bincount(here.reshape(-1), minlength=self._empty + 1)[here]  # (B, N), >= 1
        crashed = self.active & (cars_here > 1)
        hits = np.where(rows, np.rint((crashed / cars_here).sum(-1)).astype(np.int64), 0)  # shared cells
        self.collisions += hits
        self.failed |= hits > 0
        opts = self.options
        rewards = np.where(self.active, -opts.time_penalty * self.tau - opts.collision_penalty * crashed, 0.0)
        rewards = np.where(rows[:, None], rewards, 0.0)
        truncated = rows & (self.t >= self.episode_len)
        info = {"won": ~self.failed, "collisions": self.collisions.copy()}
        return Stepped(rewards, np.zeros_like(rows), truncated, info)

    def observe(self) -> Observed:
        """Observations, masks, state and `at_risk` (module docstring) of every env."""
        b, n = self.num_envs, self.n_agents
        active, route, progress = self.active, self.route, self.progress
        here = self._here()
        cars = np.bincount(here.reshape(-1), minlength=self._empty + 1)  # per cell of every env
        key = np.where(active, route * self._width + progress, self._nowhere)  # (B, N): a row of the tables
        obs = np.take(self._obs_table, key, axis=0)  # (B, N, D), a fresh array; zero rows for empty slots
        obs[..., 0] = self.last_gas & active
        window = (self._base + self._pcells[route, progress])[..., None] + self._offsets  # (B, N, W)
        others = cars[window] - (self._offsets == 0)  # other cars: not itself
        obs[..., self._o_cars : self._o_id] = np.where(active[..., None], others, 0)
        if self.options.agent_id:
            obs[..., self._o_id :] = np.eye(n, dtype=np.float32) * active[..., None]
        mask = np.ones((b, n, 2), dtype=np.float32)
        mask[..., GAS] = active
        state = np.take(self._state_table, key, axis=0)  # (B, N, 4 + R)
        state[..., 3] = np.where(active, self.tau / self.episode_len, 0.0)
        time = (self.t / self.episode_len).astype(np.float32)[:, None]
        state = np.concatenate([state.reshape(b, -1), time], axis=1)
        # at_risk: each car claims its cell and its next one; a cell claimed twice is a possible meeting.
        nxt = self._pnext[route, progress]
        there = np.where(active & (nxt >= 0), self._base + nxt, self._empty)
        claims = np.bincount(np.concatenate([here.reshape(-1), there.reshape(-1)]), minlength=self._empty + 1)
        at_risk = active & ((claims[here] > 1) | ((claims[there] > 1) & (there < self._empty)))
        return Observed(obs, mask, active.copy(), state, {"at_risk": at_risk})

    def place_car(self, b: int, slot: int, route: int, progress: int = 0, tau: int = 0) -> None:
        """Put a car in slot ``slot`` of env ``b`` on ``route`` at index ``progress`` (for tests and scripted
        scenes)."""
        if not 0 <= route < len(self.routes) or not 0 <= progress < self.route_len[route]:
            raise ValueError(
                f"route {route}, progress {progress}; expected a route in 0..{len(self.routes) - 1} and a progress "
                "inside it"
            )
        self.active[b, slot], self.route[b, slot], self.progress[b, slot] = True, route, progress
        self.tau[b, slot], self.last_gas[b, slot] = tau, False

    def render(self, b: int) -> np.ndarray:
        """RGB (G*CELL, G*CELL, 3) uint8: grass, road (junctions lighter), cars in their slot's colour (a white
        dot: it braked last), cells where cars collide framed in red."""
        g, c = self.grid_size, self.CELL
        rows, cols = np.divmod(np.arange(g * g), g)
        junction = (self.road.sum(1) == g)[rows] & (self.road.sum(0) == g)[cols]
        base = np.where(
            junction[:, None], (150, 150, 150), np.where(self.road.reshape(-1, 1), (95, 95, 95), (40, 90, 40))
        )
        image = np.repeat(np.repeat(base.reshape(g, g, 3), c, 0), c, 1).astype(np.uint8)
        cell = self._cells()[b]
        slots = np.flatnonzero(self.active[b])
        for place in np.unique(cell[slots]):
            here = slots[cell[slots] == place]
            top, left = int(place // g) * c, int(place % g) * c
            if here.size > 1:
                image[top : top + c, left : left + c] = (255, 0, 0)
            width = (c - 4) // here.size
            for k, slot in enumerate(here):
                x0 = left + 2 + k * width
                image[top + 2 : top + c - 2, x0 : x0 + max(width, 1)] = self._palette[slot]
                if not self.last_gas[b, slot]:
                    image[top + c // 2 - 1 : top + c // 2 + 1, x0 + width // 2 - 1 : x0 + width // 2 + 1] = 255
        return image

    def _cells(self) -> np.ndarray:
        """(B, N) flat cell r*G+c of each slot's car (meaningless for empty slots)."""
        return self.route_cells[self.route, self.progress]

    def _here(self) -> np.ndarray:
        """(B, N) each car's bin: its cell in its env's padded grid; the last bin for empty slots."""
        return np.where(self.active, self._base + self._pcells[self.route, self.progress], self._empty)

    def _arrive(self, rows: np.ndarray, taken: np.ndarray | None = None) -> None:
        """One arrival round (rule 3) in the envs with ``rows[b]``, drawing from their blocks of uniforms; the
        empty slots ``taken`` (B, N) are not given out (freed on this step)."""
        blocks = self._uniforms  # (B, rounds, 3E)
        for b in np.flatnonzero(rows & (self._round == blocks.shape[1])):  # once per block and env
            blocks[b] = self.rngs[b].random(blocks.shape[1:])
            self._round[b] = 0
        u = blocks[self._envs, np.minimum(self._round, blocks.shape[1] - 1)]  # (B, 3E): this round's uniforms
        self._round += rows
        free = ~self.active if taken is None else ~(self.active | taken)
        n_free = free.sum(-1)
        for e in range(len(self.entry_names)):
            arrive = rows & (u[:, 3 * e] < self.arrival_prob) & (n_free > 0)
            if not arrive.any():
                continue
            envs = np.flatnonzero(arrive)
            pick = (u[envs, 3 * e + 2] * n_free[envs]).astype(np.int64)  # which free slot, in slot order
            slot = np.argmax(np.cumsum(free[envs], -1) > pick[:, None], -1)
            route = self._entry_first[e] + (u[envs, 3 * e + 1] * self._entry_count[e]).astype(np.int64)
            self.active[envs, slot], self.route[envs, slot], self.progress[envs, slot] = True, route, 0
            self.tau[envs, slot], self.last_gas[envs, slot] = 0, False
            free[envs, slot] = False
            n_free[envs] -= 1


def traffic_junction_env(
    options: TrafficJunctionOptions | None = None, render_mode: str | None = None
) -> BatchedParallelEnv:
    """The registry factory: one traffic junction as a PettingZoo ParallelEnv (for `TeamEnv`)."""
    return BatchedParallelEnv(TrafficJunctionGame(options, 1), render_mode=render_mode)


def traffic_junction_vector_env(
    options: TrafficJunctionOptions, num_envs: int, team_reward: str, use_state: bool, history: int
) -> BatchedTeamEnv:
    """The registry's vector factory: `num_envs` traffic junctions stepped together as a VectorEnv of team envs."""
    return BatchedTeamEnv(
        TrafficJunctionGame(options, num_envs), team_reward=team_reward, use_state=use_state, history=history
    )
