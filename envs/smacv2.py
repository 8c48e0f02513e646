"""`SMACv2Env`: smacv2's `StarCraftCapabilityEnvWrapper` as a PettingZoo ParallelEnv of the allied units (issue 7).

`TeamEnv` then adapts it like any other env. Facts of smacv2 (github oxwhirl/smacv2, read from its source, not on
PyPI; it needs StarCraft II at SC2PATH with the SMAC maps) that this adapter relies on:

- `StarCraftCapabilityEnvWrapper(capability_config=..., map_name="10gen_<race>", ...)` builds nothing heavy;
  StarCraft II starts on the first `reset()`. The wrapper writes into the dicts of `capability_config`, so
  every env gets its own copy (`capability_config(options)` builds a fresh one).
- `reset()` returns `(obs, state)`, except when its internal retry path runs, which returns None: we never use
  the return value, and read `get_obs()` / `get_avail_actions()` instead.
- `step(actions)` takes one int per unit (dead units: 0) and returns `(reward, terminated, info)` with info
  `battle_won`, `dead_allies`, `dead_enemies` (counts); on a websocket/protocol error it restarts StarCraft II
  and returns `(0, True, {})`. The time limit is `get_env_info()["episode_limit"]`; reaching it also gives
  `terminated=True` (the key `episode_limit` is in info only with `continuing_episode=True`).
- `get_avail_actions()` is a list of per-unit lists of 0/1 ints; action 0 is the no-op, available to a unit
  if and only if it is dead (a live unit can always stop, action 1); 2-5 move, 6.. attack a target.
- `get_env_info()` -> `n_agents`, `n_actions`, `obs_shape`, `state_shape`, `episode_limit` (200 on the gen maps).

Decisions written down here:

- Agents are `ally_0 .. ally_{n_units-1}` in smacv2's unit order. A unit whose available actions are the no-op
  alone is dead: it terminates in the step it died in and leaves `agents`, so `TeamEnv` zeroes its row, sets
  `alive` to 0 and leaves it only the no-op; we send smacv2 the no-op for it from then on.
- The reward is the team's: every agent of the team, dead ones included, is credited smacv2's reward each step,
  so `TeamEnv`'s "mean" team reward is exactly smacv2's reward whatever the number of survivors.
- End of an episode: a won battle or a wiped-out team terminates every live agent; reaching `episode_limit`
  without a win truncates them (a time limit, the critic bootstraps). A protocol error truncates them too, and
  is recorded as `protocol_error=True` in info: the episode was cut by a failure outside the game, its last real
  observation is the one returned again, and the reward of the failed step is smacv2's 0.
- Observations follow PettingZoo's masking convention, `{"observation": (obs_shape,), "action_mask": (A,)}`, so
  that PettingZoo's own checks sample valid actions; `TeamEnv` reads the mask from there.
- Every step's info carries the team facts `won` (smacv2's `battle_won`), `dead_allies`, `dead_enemies` and
  `protocol_error`.
- The scenario is described by flat options (race, team sizes, unit mix, start positions), from which the
  adapter builds smacv2's capability config (`capability_config`) with the per-race unit mixes and map of
  smacv2's published scenarios. Observation flags follow those scenarios too (unit ranges, own position).
- A missing smacv2 or StarCraft II raises `MissingDependencyError` (a ValueError, so configs fail before Ray
  starts) saying how to install it, before anything is built. Tests inject a stand-in through `factory`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs.options import check_field_types, field_path, require, require_agents
from envs.parallel import ParallelStep

RACE_UNITS: dict[str, tuple[tuple[tuple[str, float], ...], tuple[str, ...]]] = {
    "protoss": ((("stalker", 0.45), ("zealot", 0.45), ("colossus", 0.1)), ()),
    "terran": ((("marine", 0.45), ("marauder", 0.45), ("medivac", 0.1)), ("medivac",)),
    "zerg": ((("zergling", 0.45), ("baneling", 0.1), ("hydralisk", 0.45)), ("baneling",)),
}
"""Race -> ((unit type, weight), ...) and the types a team may not consist of only (smacv2's scenario configs)."""

START_POSITIONS = ("surrounded_and_reflect", "surrounded", "reflect_position")
"""smacv2's start position distributions."""

DIFFICULTIES = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "A")
"""StarCraft II's built-in AI levels as smacv2 names them ("7" = VeryHard, the SMAC standard)."""

MAP_SIZE = 32
"""The gen maps are 32x32_flat.SC2Map."""

SMAC_MAP = "32x32_flat.SC2Map"

NOOP_ACTION = 0

INSTALL_SMACV2 = (
    "pip install 'commformer[smacv2]' (from a checkout: pip install -e '.[smacv2]'; it installs smacv2 from "
    "git+https://github.com/oxwhirl/smacv2.git)"
)
INSTALL_SC2 = (
    "install StarCraft II 4.10 for Linux (https://github.com/Blizzard/s2client-proto#downloads, e.g. "
    "SC2.4.10.zip unpacked to ~/StarCraftII) and set SC2PATH to that folder; then put the SMAC maps "
    f"(SMAC_Maps.zip from https://github.com/oxwhirl/smacv2/releases/tag/maps, which holds {SMAC_MAP}) in "
    "$SC2PATH/Maps/SMAC_Maps"
)


class MissingDependencyError(ValueError):
    """smacv2 or StarCraft II is not installed; the message says how to install it."""


def sc2_path() -> Path:
    """Where pysc2 looks for StarCraft II on Linux: $SC2PATH, else ~/StarCraftII."""
    return Path(os.environ.get("SC2PATH", "~/StarCraftII")).expanduser()


def unavailable_reason() -> str | None:
    """Why smacv2 cannot run here, with how to fix it; None when smacv2 and StarCraft II are in place."""
    if importlib.util.find_spec("smacv2") is None:
        return f"the smacv2 env needs the smacv2 package, which is not installed: {INSTALL_SMACV2}"
    root = sc2_path()
    where = f"SC2PATH={os.environ['SC2PATH']}" if "SC2PATH" in os.environ else f"{root} (SC2PATH is not set)"
    if not (root / "Versions").is_dir():
        return f"the smacv2 env needs StarCraft II, which is not at {where}: {INSTALL_SC2}"
    if not (root / "Maps" / "SMAC_Maps" / SMAC_MAP).is_file():
        return f"the smacv2 env needs the SMAC map {SMAC_MAP} in {root / 'Maps' / 'SMAC_Maps'}: {INSTALL_SC2}"
    return None


def require_smacv2() -> None:
    """Raise `MissingDependencyError` (with install instructions) unless smacv2 and StarCraft II are installed."""
    reason = unavailable_reason()
    if reason is not None:
        raise MissingDependencyError(reason)


def _parse_unit_types(text: str, race: str) -> tuple[tuple[str, float], ...]:
    """ "type:weight,type:weight" -> ((type, weight), ...); types must belong to `race`, weights sum to 1."""
    known = [name for name, _ in RACE_UNITS[race][0]]
    parsed = []
    for item in text.split(","):
        name, sep, weight = item.strip().partition(":")
        try:
            value = float(weight) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if name not in known or not value >= 0.0:
            raise ValueError(
                f"{field_path('unit_types')} must be 'type:weight,...' with types of {race} ({', '.join(known)}) "
                f"and weights >= 0, got {text!r}"
            )
        parsed.append((name, value))
    total = sum(w for _, w in parsed)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{field_path('unit_types')} weights must sum to 1, got {total:g} in {text!r}")
    return tuple(parsed)


@dataclass(frozen=True)
class SMACv2Options:
    """Options of `smacv2` (`env.options.*`); the defaults are smacv2's protoss_5_vs_5 scenario."""

    race: str = "protoss"
    """"protoss", "terran" or "zerg": both teams' race and the map 10gen_<race>."""
    n_units: int = 5
    """Allied units: the team size N."""
    n_enemies: int = 5
    """Enemy units, played by StarCraft II's built-in AI."""
    unit_types: str | None = None
    """Unit mix as "type:weight,..." (e.g. "stalker:0.5,zealot:0.5"); None: the race's smacv2 mix."""
    start_positions: str = "surrounded_and_reflect"
    """smacv2's start position distribution: surrounded_and_reflect, surrounded or reflect_position."""
    reflect_probability: float = 0.5
    """With surrounded_and_reflect: the probability of a reflect start (else surrounded); smacv2's `p`."""
    difficulty: str = "7"
    """Built-in AI level "1".."9" or "A" ("7" = VeryHard, as in every SMAC benchmark)."""
    seed: int | None = None
    """StarCraft II's game seed (fixed when the game starts; resets do not reseed it)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require(self.race in RACE_UNITS, "race", f"one of {', '.join(RACE_UNITS)}", self.race)
        require_agents("n_units", self.n_units)
        require_agents("n_enemies", self.n_enemies)
        if self.unit_types is not None:
            _parse_unit_types(self.unit_types, self.race)
        expected = f"one of {', '.join(START_POSITIONS)}"
        require(self.start_positions in START_POSITIONS, "start_positions", expected, self.start_positions)
        p = self.reflect_probability
        require(0.0 <= p <= 1.0, "reflect_probability", "in [0, 1]", p)
        require(self.difficulty in DIFFICULTIES, "difficulty", f"one of {', '.join(DIFFICULTIES)}", self.difficulty)

    @property
    def map_name(self) -> str:
        return f"10gen_{self.race}"


def capability_config(options: SMACv2Options) -> dict[str, Any]:
    """smacv2's capability config of the scenario (a fresh dict: smacv2 writes into it)."""
    mix, exceptions = RACE_UNITS[options.race]
    if options.unit_types is not None:
        mix = _parse_unit_types(options.unit_types, options.race)
    team_gen: dict[str, Any] = {
        "dist_type": "weighted_teams",
        "unit_types": [name for name, _ in mix],
        "weights": [weight for _, weight in mix],
        "observe": True,
    }
    kept = [name for name in exceptions if name in team_gen["unit_types"]]
    if kept:
        team_gen["exception_unit_types"] = kept
    start: dict[str, Any] = {"dist_type": options.start_positions, "map_x": MAP_SIZE, "map_y": MAP_SIZE}
    if options.start_positions == "surrounded_and_reflect":
        start["p"] = options.reflect_probability
    return {"n_units": options.n_units, "n_enemies": options.n_enemies, "team_gen": team_gen, "start_positions": start}


def env_kwargs(options: SMACv2Options) -> dict[str, Any]:
    """Keyword arguments of `StarCraftCapabilityEnvWrapper` for the scenario (smacv2's published settings)."""
    return {
        "capability_config": capability_config(options),
        "map_name": options.map_name,
        "difficulty": options.difficulty,
        "seed": options.seed,
        "conic_fov": False,
        "use_unit_ranges": True,
        "min_attack_range": 2,
        "obs_own_pos": True,
        "fully_observable": False,
    }


def make_capability_env(kwargs: dict[str, Any]) -> Any:
    """The real `StarCraftCapabilityEnvWrapper`; checks the installation first."""
    require_smacv2()
    from smacv2.env import StarCraftCapabilityEnvWrapper

    return StarCraftCapabilityEnvWrapper(**kwargs)


Factory = Callable[[dict[str, Any]], Any]
"""kwargs of StarCraftCapabilityEnvWrapper -> an object with its API (the real one, or a test stand-in)."""

ENV_INFO_KEYS = ("n_agents", "n_actions", "obs_shape", "state_shape", "episode_limit")


class SMACv2Env(ParallelEnv):
    """The allied units of a SMACv2 battle as a ParallelEnv (module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {
        "name": "smacv2",
        "render_modes": ["rgb_array"],
        "render_fps": 8,
        "is_parallelizable": True,
    }

    def __init__(
        self, options: SMACv2Options | None = None, factory: Factory | None = None, render_mode: str | None = None
    ) -> None:
        self.options = options if options is not None else SMACv2Options()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not supported by smacv2; expected None or 'rgb_array'")
        self.render_mode = render_mode
        self._env = (factory or make_capability_env)(env_kwargs(self.options))
        info = self._env.get_env_info()
        missing = [key for key in ENV_INFO_KEYS if not isinstance(info.get(key), int)]
        if missing:
            raise ValueError(f"smacv2 get_env_info() returned {info!r}; expected integers for {', '.join(missing)}")
        if info["n_agents"] != self.options.n_units:
            raise ValueError(f"smacv2 built {info['n_agents']} units; {field_path('n_units')}={self.options.n_units}")
        self.n_actions: int = info["n_actions"]
        self.episode_limit: int = info["episode_limit"]
        self._obs_dim: int = info["obs_shape"]
        self._state_dim: int = info["state_shape"]
        n = info["n_agents"]
        self.possible_agents = [f"ally_{i}" for i in range(n)]
        self.agents: list[str] = []
        # SMAC features are normalised but not bounded by contract; declare the spaces unbounded.
        self._observation_space = spaces.Dict(
            {
                "observation": spaces.Box(-np.inf, np.inf, shape=(self._obs_dim,), dtype=np.float32),
                "action_mask": spaces.Box(0, 1, shape=(self.n_actions,), dtype=np.int8),
            }
        )
        self._action_space: spaces.Space[Any] = spaces.Discrete(self.n_actions)
        self.state_space = spaces.Box(-np.inf, np.inf, shape=(self._state_dim,), dtype=np.float32)
        self._dead = [False] * n
        self._masks = np.zeros((n, self.n_actions), dtype=np.int8)
        self._last_obs: list[np.ndarray] = []
        self._last_state: np.ndarray | None = None  # cached per step: smacv2 cannot be asked after an error
        self._state_fresh = False
        self._facts: dict[str, Any] = {}
        self._steps = 0

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """{"observation": Box (obs_shape,) float32, smacv2's per-unit observation; "action_mask": (A,) int8}."""
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Space[Any]:
        """Discrete(n_actions): 0 no-op (dead units only), 1 stop, 2-5 move, 6.. attack."""
        return self._action_space

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
        """Start a new battle (StarCraft II launches on the first call). `seed` and `options` are ignored:
        StarCraft II is seeded once, by the `seed` option, when it starts."""
        self._env.reset()
        self._steps = 0
        self._dead = [False] * len(self.possible_agents)
        self._facts = {"won": False, "dead_allies": 0, "dead_enemies": 0, "protocol_error": False}
        self._read_units()
        self.agents = [a for i, a in enumerate(self.possible_agents) if not self._dead[i]]
        return self._observations(self.agents), self._infos(self.agents)

    def step(self, actions: dict[str, Any]) -> ParallelStep[dict[str, np.ndarray]]:
        """Send one action per live unit (the no-op for dead ones) and return the allies' transition."""
        if not self.agents:
            raise RuntimeError("SMACv2Env.step() called before reset() or after the episode ended")
        live = self.agents
        reward, terminated, info = self._env.step(self._unit_actions(actions))
        self._steps += 1
        protocol_error = bool(terminated) and not info
        if protocol_error:
            # smacv2 already restarted StarCraft II; its units are gone: keep the last real observation.
            self._facts = {**self._facts, "protocol_error": True}
            terminations = dict.fromkeys(live, False)
            truncations = dict.fromkeys(live, True)
        else:
            self._check_info(info)
            won = bool(info["battle_won"])
            self._facts = {
                "won": won,
                "dead_allies": int(info["dead_allies"]),
                "dead_enemies": int(info["dead_enemies"]),
                "protocol_error": False,
            }
            self._read_units()
            time_limit = bool(info.get("episode_limit")) or (self._steps >= self.episode_limit and not won)
            over = bool(terminated) and not time_limit
            terminations = {a: over or self._dead[self._index(a)] for a in live}
            truncations = {a: bool(terminated) and time_limit and not terminations[a] for a in live}
        done = bool(terminated)
        rewards = dict.fromkeys(self.possible_agents, float(reward))  # the team's reward, dead agents included
        self.agents = [] if done else [a for a in live if not terminations[a]]
        return self._observations(live), rewards, terminations, truncations, self._infos(live)

    def state(self) -> np.ndarray:
        """smacv2's global state (state_shape,) float32 (the last one read, after a protocol error)."""
        if not self._state_fresh:
            state = np.asarray(self._env.get_state(), dtype=np.float32)
            if state.shape != (self._state_dim,):
                raise ValueError(f"smacv2 get_state() returned shape {state.shape}; expected ({self._state_dim},)")
            self._last_state, self._state_fresh = state, True
        assert self._last_state is not None
        return self._last_state

    def render(self) -> np.ndarray | None:
        """smacv2's rgb_array frame with `render_mode="rgb_array"`."""
        if self.render_mode is None:
            return None
        return np.asarray(self._env.render(mode="rgb_array"))

    def close(self) -> None:
        """Close StarCraft II."""
        self._env.close()

    # ------------------------------------------------------------------ internals

    def _index(self, agent: str) -> int:
        return int(agent.rsplit("_", 1)[1])

    def _unit_actions(self, actions: dict[str, Any]) -> list[int]:
        """One int per unit: the live agents' validated actions, the no-op for dead ones."""
        out = [NOOP_ACTION] * len(self.possible_agents)
        for agent in self.agents:
            if agent not in actions:
                raise ValueError(f"no action for live agent {agent!r}; actions were given for {sorted(actions)}")
            act = actions[agent]
            i = self._index(agent)
            valid = not isinstance(act, bool | np.bool_) and isinstance(act, int | np.integer)
            if not valid or not 0 <= act < self.n_actions or not self._masks[i, act]:
                available = np.flatnonzero(self._masks[i]).tolist()
                raise ValueError(f"action {act!r} for agent {agent!r} is not available; available: {available}")
            out[i] = int(act)
        return out

    def _read_units(self) -> None:
        """Read observations and masks from smacv2 (checking them); a unit with only the no-op is dead."""
        n = len(self.possible_agents)
        obs = self._env.get_obs()
        if len(obs) != n:
            raise ValueError(f"smacv2 get_obs() returned {len(obs)} observations; expected one per unit ({n})")
        self._last_obs = [np.asarray(o, dtype=np.float32) for o in obs]
        for i, o in enumerate(self._last_obs):
            if o.shape != (self._obs_dim,):
                raise ValueError(f"smacv2 observation of unit {i} has shape {o.shape}; expected ({self._obs_dim},)")
        masks = np.asarray(self._env.get_avail_actions(), dtype=np.int8)
        if masks.shape != (n, self.n_actions):
            raise ValueError(
                f"smacv2 get_avail_actions() gave shape {masks.shape}; expected ({n}, {self.n_actions}), "
                "one list of 0/1 per unit"
            )
        for i in range(n):
            only_noop = masks[i, NOOP_ACTION] == 1 and not masks[i, NOOP_ACTION + 1 :].any()
            if masks[i, NOOP_ACTION] == 1 and not only_noop:
                raise ValueError(
                    f"smacv2 offered the no-op and other actions to unit {i}: {masks[i].tolist()}; the no-op is "
                    "only for dead units"
                )
            if not masks[i].any():
                raise ValueError(f"smacv2 offered no action at all to unit {i}; a unit has at least one")
            self._dead[i] = bool(only_noop)
        self._masks = masks
        self._state_fresh = False

    def _check_info(self, info: Any) -> None:
        keys = ("battle_won", "dead_allies", "dead_enemies")
        if not isinstance(info, dict) or any(k not in info for k in keys):
            raise ValueError(f"smacv2 step() returned info {info!r}; expected a dict with {', '.join(keys)}")

    def _observations(self, agents: list[str]) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for a in agents:
            i = self._index(a)
            out[a] = {"observation": self._last_obs[i], "action_mask": self._masks[i].copy()}
        return out

    def _infos(self, agents: list[str]) -> dict[str, dict[str, Any]]:
        return {a: dict(self._facts) for a in agents}


def smacv2_env(options: SMACv2Options, render_mode: str | None = None) -> SMACv2Env:
    """The registry factory of `smacv2`: the real smacv2 (raises `MissingDependencyError` if it is missing)."""
    return SMACv2Env(options, render_mode=render_mode)
