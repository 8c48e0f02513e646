"""Predator-prey and predator-capture-prey: grid hunts for a prey that never moves, B envs stepped in numpy.

The predator-prey task of IC3Net (Singh et al. 2019, "Learning when to communicate at scale"), on which MAGIC (Niu et
al. 2021) and CommFormer (Hu et al. 2024) compare themselves with CommNet, TarMAC and IC3Net, and the heterogeneous
predator-capture-prey of MAGIC's line of work, written from their descriptions (and the published settings of their
scripts) as `envs.batched.BatchedGame`s: `step` and `observe` are array operations over all B envs, `reset` draws
each resetting env from its own generator (a loop over the resetting envs only).

`predator_prey`: a ``dim`` x ``dim`` grid, N predators and one prey, placed on N + 1 distinct cells drawn uniformly at
reset (as IC3Net). A predator sees the (2v + 1)^2 window around it (vision v; 0: its own cell).

- Actions: 0 stay (the no-op), 1 up (row - 1), 2 down, 3 left (column - 1), 4 right. A move off the grid is *masked*
  rather than clipped: a clipped move is a second stay, which would double the no-op's share of a policy at the
  edges without telling it so (`step` still clips, as a safety net for direct callers).
- A predator on the prey stays there: only its no-op is available (IC3Net ignores its later actions).
- Reward per predator and step: ``step_penalty`` (-0.05, IC3Net's time-step penalty) while it is not on the prey;
  on the prey (from the step it arrives) ``on_prey_reward`` x k, k the number of agents on the prey. IC3Net's code
  has three modes that differ only on the prey: "mixed" 0 (the default of IC3Net's, MAGIC's and CommFormer's
  scripts, and the mode that ends the episode once every predator reached the prey), "cooperative" 0.05 x k,
  "competitive" 0.05 / k. The default here is 0, the mixed mode, because our episode terminates at success: with a
  positive reward on the prey a team would earn more by keeping one predator off it until the time limit.
- Success: every predator on the prey. The episode *terminates* on that step (info ``won``, and ``capture_step``,
  the step number of the capture; 0 on every other step, so average it over won episodes); otherwise it is
  *truncated* after ``max_steps`` steps (IC3Net's "steps taken" is ``capture_step`` if won, else ``max_steps``).
- Observation (D = 2 dim + 3 (2v + 1)^2): one-hot of the predator's row, one-hot of its column, then the window,
  row-major from its top-left cell, 3 channels per cell: prey here (0/1), the number of *other* predators here,
  outside the grid (0/1). A one-hot position (rather than normalised coordinates) plays the role of IC3Net's
  one-hot cell index and is what an MLP reads most easily.
- Global state, (N + 1) 2 dim: the one-hot row and column of every predator, then of the prey.
- Ready sizes (`PREDATOR_PREY_SIZES`, IC3Net's README and MAGIC's scripts): 5 predators on 10x10 with vision 1 and
  40 steps, 10 on 20x20, vision 1, 80 steps; the default is 3 on 5x5 with 20 steps and vision 1, CommFormer's
  setting (its script default; IC3Net's and MAGIC's "easy" 5x5 uses vision 0). Agents are ``predator_<i>``.
- Per-agent fact ``saw_prey``: the prey has been inside the agent's window at some step of this episode (reset
  included), i.e. the agent holds information the others may lack.

`predator_capture_prey` (the heterogeneous variant from MAGIC's lab, shipped by CommFormer as "PCP", whose script
sets 2 predators + 1 capture agent, vision 1, 5x5, 20 evaluation steps: our defaults): ``n_predators`` predators
(agents ``agent_0..P-1``) that see but cannot capture, then ``n_capture`` capture agents (``agent_P..N-1``) that are
blind but can.

- Actions 0-4 as above and 5 capture, one action count for the whole team. Predators: as in predator_prey; capture
  is masked. Capture agents: a capture succeeds when the agent stands on the prey, elsewhere it is a wasted step.
  A capture agent on the prey can no longer move (MAGIC ignores its moves there) but its mask keeps the moves: the
  mask must not tell a blind agent that it stands on the prey. After its capture only its no-op is available.
- Reward: predators as in predator_prey (k counts both kinds); a capture agent pays ``step_penalty`` until it has
  captured (standing on the prey without capturing still pays, MAGIC's default scheme), then earns
  ``on_prey_reward`` x k.
- Success (terminal, ``won``): every predator on the prey and every capture agent has captured; else truncation.
- Observation (D = 2 dim + 4 (2v + 1)^2 + 2): the position one-hots, the window with 4 channels per cell (prey,
  other predators, other capture agents, outside), and a one-hot of the type (predator, capture agent) last, so
  the team is one homogeneous-looking batch. A capture agent's window is all zero: it observes only its position.
- State: the positions as above, then whether each agent has captured (N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from envs.batched import BatchedGame, BatchedParallelEnv, BatchedTeamEnv, Observed, Stepped
from envs.options import check_field_types, require, require_agents, require_grid

STAY, UP, DOWN, LEFT, RIGHT, CAPTURE = range(6)
"""Action indices; STAY is the team env's no-op (action 0)."""

_MOVE_ROW = np.array([0, -1, 1, 0, 0, 0], dtype=np.int64)  # row change of each action (capture does not move)
_MOVE_COL = np.array([0, 0, 0, -1, 1, 0], dtype=np.int64)


def _check_hunt(options: Any, n_agents: int) -> None:
    """The checks both option classes share (after `check_field_types`)."""
    # Every agent and the prey start on distinct cells (as IC3Net), so the grid must hold them all.
    least = math.ceil(math.sqrt(n_agents + 1))
    require(options.dim >= least, "dim", f">= {least} (dim^2 cells for {n_agents} agents and the prey)", options.dim)
    require_grid("dim", options.dim)
    require(0 <= options.vision < options.dim, "vision", f"in [0, dim - 1 = {options.dim - 1}]", options.vision)
    require(options.max_steps >= 1, "max_steps", ">= 1", options.max_steps)
    require(math.isfinite(options.step_penalty), "step_penalty", "finite", options.step_penalty)
    require(math.isfinite(options.on_prey_reward), "on_prey_reward", "finite", options.on_prey_reward)


@dataclass(frozen=True)
class PredatorPreyOptions:
    """Options of `predator_prey` (`env.options.*`); the defaults are CommFormer's setting: 3 predators, 5x5."""

    n_predators: int = 3
    """Predators N, one agent each."""
    dim: int = 5
    """The grid is dim x dim cells."""
    vision: int = 1
    """A predator sees the (2 vision + 1)^2 cells around it; 0: its own cell only (IC3Net's 5x5 used 0,
    CommFormer's 1)."""
    max_steps: int = 20
    """Time limit; an episode not won by then is truncated (IC3Net / MAGIC: 20 on 5x5, 40 on 10x10, 80 on 20x20)."""
    step_penalty: float = -0.05
    """Reward of a predator for each step it ends off the prey (IC3Net's TIMESTEP_PENALTY)."""
    on_prey_reward: float = 0.0
    """Reward of a predator on the prey per step, times the number of agents on it (IC3Net "mixed": 0;
    "cooperative": 0.05, which pays for delaying the terminal: see the module docstring)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require_agents("n_predators", self.n_predators)
        _check_hunt(self, self.n_predators)


@dataclass(frozen=True)
class PredatorPreyMediumOptions(PredatorPreyOptions):
    """IC3Net's / MAGIC's medium predator-prey: 5 predators on 10x10, vision 1, 40 steps."""

    n_predators: int = 5
    dim: int = 10
    max_steps: int = 40


@dataclass(frozen=True)
class PredatorPreyHardOptions(PredatorPreyOptions):
    """IC3Net's / MAGIC's hard predator-prey: 10 predators on 20x20, vision 1, 80 steps."""

    n_predators: int = 10
    dim: int = 20
    max_steps: int = 80


PREDATOR_PREY_SIZES: dict[str, type[PredatorPreyOptions]] = {
    "5x5": PredatorPreyOptions,
    "10x10": PredatorPreyMediumOptions,
    "20x20": PredatorPreyHardOptions,
}
"""The ready sizes, each an options class whose defaults are the published setting (one env-table row each)."""


@dataclass(frozen=True)
class PredatorCapturePreyOptions:
    """Options of `predator_capture_prey`; the defaults are CommFormer's PCP: 2 predators + 1 capture agent, 5x5."""

    n_predators: int = 2
    """Predators P: they see (vision) but cannot capture; rows 0..P-1."""
    n_capture: int = 1
    """Capture agents: blind, but only they can capture; rows P..N-1."""
    dim: int = 5
    """The grid is dim x dim cells."""
    vision: int = 1
    """A predator sees the (2 vision + 1)^2 cells around it."""
    max_steps: int = 20
    """Time limit; an episode not won by then is truncated."""
    step_penalty: float = -0.05
    """Reward per step of a predator off the prey, and of a capture agent that has not captured."""
    on_prey_reward: float = 0.0
    """Reward per step of a predator on the prey or a capture agent that captured, times the agents on it."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require_agents("n_predators", self.n_predators)
        require_agents("n_capture", self.n_capture)
        _check_hunt(self, self.n_predators + self.n_capture)


class _Hunt(BatchedGame):
    """B grid hunts (module docstring); ``n_capture == 0`` is predator_prey, otherwise predator_capture_prey."""

    agent_prefix: ClassVar[str] = "agent"
    fact_names: ClassVar[tuple[str, ...]] = ("saw_prey",)

    def __init__(self, options: Any, n_predators: int, n_capture: int, num_envs: int) -> None:
        super().__init__(num_envs)
        self.options = options
        self.dim, self.vision, self.max_steps = options.dim, options.vision, options.max_steps
        self.heterogeneous = n_capture > 0
        b, n, dim, v = num_envs, n_predators + n_capture, options.dim, options.vision
        self.n_agents = n
        self.n_actions = 6 if self.heterogeneous else 5
        self.channels = 4 if self.heterogeneous else 3  # prey, predators, [capture agents], outside
        self.window = w = 2 * v + 1
        self.obs_dim = 2 * dim + w * w * self.channels + (2 if self.heterogeneous else 0)
        self.state_dim = (n + 1) * 2 * dim + (n if self.heterogeneous else 0)
        self.is_capture = np.arange(n) >= n_predators  # (N,)
        # Counts live on a grid padded by v cells on each side, flattened: cell (r, c) is (r + v) * side + c + v.
        # A window is then the agent's cell plus fixed offsets, and "outside" a constant lookup.
        side = dim + 2 * v
        self.side = side
        dr, dc = np.meshgrid(np.arange(-v, v + 1), np.arange(-v, v + 1), indexing="ij")
        self.offsets = (dr * side + dc).reshape(-1)  # (K,), row-major from the top-left cell
        inside = np.zeros((side, side), dtype=bool)
        inside[v : v + dim, v : v + dim] = True
        self.outside = ~inside.reshape(-1)  # (side^2,)
        self.types = 2 if self.heterogeneous else 1
        self.type_of = self.is_capture.astype(np.int64)  # (N,), which count an agent adds to
        self.env_base = np.arange(b)[:, None] * (self.types * side * side)  # (B, 1) flat offset of env b's counts
        self.rows_index, self.agents_index = np.meshgrid(np.arange(b), np.arange(n), indexing="ij")  # (B, N) each
        self.state_index = np.meshgrid(np.arange(b), np.arange(n + 1), indexing="ij")  # (B, N + 1) each
        self.row = np.zeros((b, n), dtype=np.int64)
        self.col = np.zeros((b, n), dtype=np.int64)
        self.prey_row = np.zeros(b, dtype=np.int64)
        self.prey_col = np.zeros(b, dtype=np.int64)
        self.captured = np.zeros((b, n), dtype=bool)  # capture agents that captured (never a predator)
        self.saw = np.zeros((b, n), dtype=bool)
        self.t = np.zeros(b, dtype=np.int64)

    # ------------------------------------------------------------------ game

    def reset(self, rows: np.ndarray) -> None:
        n, dim = self.n_agents, self.dim
        for b in np.flatnonzero(rows):
            cells = self.rngs[b].choice(dim * dim, size=n + 1, replace=False)  # distinct cells; the last is the prey
            self.row[b], self.col[b] = cells[:n] // dim, cells[:n] % dim
            self.prey_row[b], self.prey_col[b] = cells[n] // dim, cells[n] % dim
        self.t[rows] = 0
        self.captured[rows] = False
        self.saw[rows] = self._sees_prey()[rows]

    def step(self, actions: np.ndarray, rows: np.ndarray) -> Stepped:
        stepped = rows[:, None]  # (B, 1)
        on_prey = self._on_prey()
        # Actions of envs that are not stepped may be anything (unchecked): clip the lookups.
        acts = np.asarray(actions)
        if self.heterogeneous:  # a capture agent's capture counts where it stands (capturing does not move it)
            self.captured |= stepped & self.is_capture & (acts == CAPTURE) & on_prey
        moving = stepped & ~on_prey  # an agent on the prey stays there
        dim = self.dim
        self.row = np.where(moving, np.clip(self.row + np.take(_MOVE_ROW, acts, mode="clip"), 0, dim - 1), self.row)
        self.col = np.where(moving, np.clip(self.col + np.take(_MOVE_COL, acts, mode="clip"), 0, dim - 1), self.col)
        self.t = self.t + rows
        on_prey = self._on_prey()
        finished = np.where(self.is_capture, self.captured, on_prey)  # (B, N): no longer penalised
        k = on_prey.sum(-1, keepdims=True)
        rewards = np.where(finished, self.options.on_prey_reward * k, self.options.step_penalty)
        rewards = np.where(stepped, rewards, 0.0)
        won = rows & finished.all(-1)
        truncated = rows & (self.t >= self.max_steps) & ~won
        self.saw |= stepped & self._sees_prey()
        capture_step = np.where(won, self.t, 0).astype(np.float64)
        return Stepped(rewards, won, truncated, {"won": won, "capture_step": capture_step})

    def observe(self) -> Observed:
        b, n, dim, k, c = self.num_envs, self.n_agents, self.dim, self.window**2, self.channels
        obs = np.zeros((b, n, self.obs_dim), dtype=np.float32)
        bi, ni = self.rows_index, self.agents_index
        obs[bi, ni, self.row] = 1.0
        obs[bi, ni, dim + self.col] = 1.0
        window = obs[..., 2 * dim : 2 * dim + k * c].reshape(b, n, k, c)  # a view: written in place
        v, side = self.vision, self.side
        cell = (self.row + v) * side + self.col + v  # (B, N) padded flat cell
        seen = cell[..., None] + self.offsets  # (B, N, K)
        prey_cell = (self.prey_row + v) * side + self.prey_col + v  # (B,)
        window[..., 0] = seen == prey_cell[:, None, None]
        # Agents per (env, type, cell) by one bincount; an agent's own cell counts it, so take it off again.
        plane = side * side
        counts = np.bincount(
            (self.env_base + self.type_of * plane + cell).reshape(-1), minlength=b * self.types * plane
        )
        counts = counts.reshape(b, self.types * plane)
        for kind in range(self.types):
            here = np.take_along_axis(counts, (seen + kind * plane).reshape(b, n * k), axis=1).reshape(b, n, k)
            here[..., k // 2] -= self.type_of == kind  # the centre cell holds the agent itself
            window[..., 1 + kind] = here
        window[..., c - 1] = self.outside[seen]
        if self.heterogeneous:
            window[:, self.is_capture] = 0.0  # capture agents are blind: only their position
            obs[..., -2] = ~self.is_capture
            obs[..., -1] = self.is_capture
        return Observed(obs, self._mask(), np.ones((b, n), dtype=bool), self._state(), {"saw_prey": self.saw.copy()})

    # ------------------------------------------------------------------ pieces

    def _on_prey(self) -> np.ndarray:
        """(B, N) bool: the agent stands on the prey."""
        return (self.row == self.prey_row[:, None]) & (self.col == self.prey_col[:, None])

    def _sees_prey(self) -> np.ndarray:
        """(B, N) bool: the prey is inside the agent's window (never for a blind capture agent)."""
        v = self.vision
        near = (np.abs(self.row - self.prey_row[:, None]) <= v) & (np.abs(self.col - self.prey_col[:, None]) <= v)
        return near & ~self.is_capture

    def _mask(self) -> np.ndarray:
        """(B, N, A) float32 (rules in the module docstring)."""
        # Free to move: a predator off the prey; a capture agent that has not captured (even on the prey, where its
        # moves are ignored: the mask must not tell a blind agent where it stands).
        free = np.where(self.is_capture, ~self.captured, ~self._on_prey())
        mask = np.empty((self.num_envs, self.n_agents, self.n_actions), dtype=np.float32)
        mask[..., STAY] = 1.0
        mask[..., UP] = free & (self.row > 0)
        mask[..., DOWN] = free & (self.row < self.dim - 1)
        mask[..., LEFT] = free & (self.col > 0)
        mask[..., RIGHT] = free & (self.col < self.dim - 1)
        if self.heterogeneous:
            mask[..., CAPTURE] = self.is_capture & ~self.captured
        return mask

    def _state(self) -> np.ndarray:
        """(B, S) float32: one-hot row and column of every agent, then of the prey, [then who captured]."""
        b, n, dim = self.num_envs, self.n_agents, self.dim
        state = np.zeros((b, self.state_dim), dtype=np.float32)
        where = state[:, : (n + 1) * 2 * dim].reshape(b, n + 1, 2 * dim)
        rows = np.concatenate([self.row, self.prey_row[:, None]], axis=1)  # (B, N + 1)
        cols = np.concatenate([self.col, self.prey_col[:, None]], axis=1)
        bi, ni = self.state_index
        where[bi, ni, rows] = 1.0
        where[bi, ni, dim + cols] = 1.0
        if self.heterogeneous:
            state[:, -n:] = self.captured
        return state

    def render(self, b: int) -> np.ndarray:
        """An RGB picture of env b: grey cells (lighter where a predator sees), the prey red, predators blue (left half
        of a cell), capture agents orange (right half; green once they captured)."""
        dim, cell, v = self.dim, max(4, 160 // self.dim), self.vision
        grid = np.full((dim, dim, 3), 50, dtype=np.uint8)
        for p in np.flatnonzero(~self.is_capture).tolist():
            r, c = int(self.row[b, p]), int(self.col[b, p])
            grid[max(r - v, 0) : r + v + 1, max(c - v, 0) : c + v + 1] = 85
        grid[self.prey_row[b], self.prey_col[b]] = (220, 40, 40)
        image = np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)
        image[::cell], image[:, ::cell] = 20, 20  # grid lines
        inset, half = max(1, cell // 5), cell // 2
        for i in range(self.n_agents):
            top, left = int(self.row[b, i]) * cell, int(self.col[b, i]) * cell
            if self.is_capture[i]:
                color = (40, 200, 80) if self.captured[b, i] else (255, 160, 0)
                image[top + inset : top + cell - inset, left + half : left + cell - inset] = color
            else:
                image[top + inset : top + cell - inset, left + inset : left + half] = (60, 120, 255)
        return image


class PredatorPreyGame(_Hunt):
    """B copies of `predator_prey` (module docstring)."""

    agent_prefix = "predator"
    name = "predator_prey"

    def __init__(self, options: PredatorPreyOptions, num_envs: int = 1) -> None:
        super().__init__(options, options.n_predators, 0, num_envs)


class PredatorCapturePreyGame(_Hunt):
    """B copies of `predator_capture_prey` (module docstring); agents 0..P-1 predators, then capture agents."""

    agent_prefix = "agent"
    name = "predator_capture_prey"

    def __init__(self, options: PredatorCapturePreyOptions, num_envs: int = 1) -> None:
        super().__init__(options, options.n_predators, options.n_capture, num_envs)


def predator_prey_env(options: PredatorPreyOptions, render_mode: str | None = None) -> BatchedParallelEnv:
    """The env table's factory of `predator_prey`: one env as a PettingZoo ParallelEnv (for `TeamEnv`)."""
    return BatchedParallelEnv(PredatorPreyGame(options), render_mode=render_mode)


def predator_prey_vector_env(
    options: PredatorPreyOptions, num_envs: int, team_reward: str, use_state: bool, history: int
) -> BatchedTeamEnv:
    """The env table's vector factory of `predator_prey`: `num_envs` team envs stepped together."""
    game = PredatorPreyGame(options, num_envs)
    return BatchedTeamEnv(game, team_reward=team_reward, use_state=use_state, history=history)


def predator_capture_prey_env(
    options: PredatorCapturePreyOptions, render_mode: str | None = None
) -> BatchedParallelEnv:
    """The env table's factory of `predator_capture_prey`: one env as a PettingZoo ParallelEnv."""
    return BatchedParallelEnv(PredatorCapturePreyGame(options), render_mode=render_mode)


def predator_capture_prey_vector_env(
    options: PredatorCapturePreyOptions, num_envs: int, team_reward: str, use_state: bool, history: int
) -> BatchedTeamEnv:
    """The env table's vector factory of `predator_capture_prey`: `num_envs` team envs stepped together."""
    game = PredatorCapturePreyGame(options, num_envs)
    return BatchedTeamEnv(game, team_reward=team_reward, use_state=use_state, history=history)
