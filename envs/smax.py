"""SMAX (jaxmarl 0.2.0): SMAC-like battles in pure JAX, as a native vector env and as a single team env (issue 7).

Two faces of one game core (`SMAXGame`):

- `SMAXVectorEnv`: B battles stepped in one jitted call (`jax.vmap` + `jax.jit`, auto-reset inside it), a
  gymnasium `VectorEnv` whose `single_observation_space` / `single_action_space` are exactly those of the team
  env (`TeamEnv` over `SMAXEnv`, docs/DESIGN.md "One team, one RLlib agent"), observations batched along a leading
  B axis. RLlib's EnvRunners build it through `gym_env_vectorize_mode="vector_entry_point"` (agents/build.py).
- `SMAXEnv`: one battle as a PettingZoo ParallelEnv of the allied units, for `TeamEnv` (rollout, evaluate,
  probing the spaces). It is also the reference the tests check the vector env's team semantics against.

Facts of jaxmarl 0.2.0 relied on (read from its source):

- `HeuristicEnemySMAX(scenario=map_name_to_scenario(name), ...)` plays the enemies with a scripted policy;
  `reset(key) -> (obs, state)`, `step_env(key, state, actions) -> (obs, state, rewards, dones, infos)` without
  auto-reset (jaxmarl's own `step` auto-resets in the same step and loses the final observation, which a
  time-limit needs for bootstrapping), `get_avail_actions(state)` -> uint8 per ally.
- Ally actions: 0-3 move, 4 stop (available to every unit, the only one of a dead unit), 5.. attack enemy j.
  Every ally gets the same reward (fraction of enemy health removed, plus `won_battle_bonus` on a win), dead ones
  included. The battle ends when a team is wiped out or by the time limit; infos are empty. A dead unit's
  observation row is all zero. jaxmarl tests the time limit before it counts the step, so a battle that nobody
  wins lasts `max_steps + 1` env steps; we keep its end flag as it is (comparable with JaxMARL's own results).

Decisions written down here:

- Team actions follow SMAC's layout (as envs/smacv2.py): 0 no-op (available only to a dead unit, the team env
  contract), 1 stop, 2-5 move, 6.. attack; so A = SMAX's actions + 1 (`TEAM_TO_SMAX`).
- A won battle or a wiped-out team *terminates*; reaching `max_steps` otherwise *truncates* (the critic
  bootstraps from the real final observation). As in envs/smacv2.py every live unit terminates with the team, so
  the final observation of a terminated battle has every row zero and `alive` 0, exactly what `TeamEnv` makes of
  `SMAXEnv`. Infos carry `won`, `dead_allies`, `dead_enemies` and `agent_rewards`, as `TeamEnv` does.
- Auto-reset is gymnasium's NEXT_STEP mode, the one RLlib 2.60's `SingleAgentEnvRunner` expects: the step that
  ends an episode returns its final observation; the next `step()` call ignores that env's actions and returns the
  first observation of a fresh battle (reward 0, not done, the reset info without `agent_rewards`).
- Randomness: env b's key chain starts at `PRNGKey(seed + b)` (gymnasium's seed + index convention), and every
  reset and every step takes `key, sub = split(key)` and uses `sub`. `SMAXEnv` follows the same chain, so
  `SMAXVectorEnv.reset(seed=s)` replays `SMAXEnv.reset(seed=s + b)` step for step.
- Hand-off: the jitted step returns its outputs as XLA CPU buffers, which `np.asarray` views without a copy
  (read-only; RLlib's torch conversion accepts those); torch can take them with `torch.from_dlpack` as well.
- Threads: jaxmarl/jax are imported on first use, after `JAX_PLATFORMS=cpu` and single-threaded XLA flags are
  put in the environment (only where unset: set them yourself to use a GPU). XLA's intra-op pool would otherwise
  fight torch and the other processes for 2 cores. `benchmarks/smax_speed.py` measures the raw stepping rate.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces
from pettingzoo import ParallelEnv

from envs import smax_scenarios
from envs.batched import AvailableTeamActions, check_team_actions
from envs.history import HistoryWindow
from envs.options import check_field_types, require
from envs.team import NOOP_ACTION, check_team_args

SCENARIOS = ("3m", "2s3z", "5m_vs_6m", "3s5z", "6h_vs_8z", "smacv2_5_units", *smax_scenarios.SCENARIOS)
"""Scenarios this adapter supports: jaxmarl's (smacv2_5_units draws unit types and start positions per battle) and
ours, built from jaxmarl's parameters (envs/smax_scenarios.py: battles where allies must talk)."""

TABLE_SCENARIOS = SCENARIOS
"""Scenarios listed in the env table as `smax_<scenario>`. smacv2_5_units's masks depend on the reset seed (its
random start positions put enemies in range or not), so the table-wide env check (tests/envs/test_registry.py)
draws its determinism action from the mask of the seeded reset it steps from."""

ATTACK_MODES = ("closest", "random")
"""How the heuristic enemies pick their targets."""

SMAX_STOP, SMAX_MOVES = 4, 4
"""SMAX's stop action and its number of move actions (0-3)."""

XLA_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

INSTALL_SMAX = "pip install 'commformer[smax]' (from a checkout: pip install -e '.[smax]'; jaxmarl 0.2.0, CPU jax)"


def unavailable_reason() -> str | None:
    """Why SMAX cannot run here (jaxmarl missing, with how to install it), or None."""
    if importlib.util.find_spec("jaxmarl") is None:
        return f"the SMAX envs need jaxmarl, which is not installed: {INSTALL_SMAX}"
    return None


def import_jaxmarl() -> Any:
    """Import jax (CPU, one XLA thread unless the environment says otherwise) and jaxmarl's SMAX module."""
    reason = unavailable_reason()
    if reason is not None:
        raise ValueError(reason)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_THREAD_FLAGS}".strip()
    # Importing jaxmarl 0.2.0 rebinds sys.stdout to the process's own stdout (which breaks any capture, pytest's
    # included) and prints two lines about optional submodules there; put the caller's stdout back.
    stdout = sys.stdout
    try:
        from jaxmarl.environments import smax
    finally:
        sys.stdout = stdout
    return smax


@dataclass(frozen=True)
class SMAXOptions:
    """Options of the `smax_*` envs (`env.options.*`); the defaults are jaxmarl's HeuristicEnemySMAX ones."""

    max_steps: int = 100
    """Time limit of a battle (each env step is 8 world steps); jaxmarl truncates after max_steps + 1 steps."""
    enemy_shoots: bool = True
    """The heuristic enemies attack (False: they only move)."""
    attack_mode: str = "closest"
    """Target choice of the heuristic enemies: closest or random."""
    won_battle_bonus: float = 1.0
    """Reward added on the step the battle is won."""
    see_enemy_actions: bool = True
    """Observations include the enemies' last actions."""
    walls_cause_death: bool = True
    """A unit touching the map edge dies."""

    def __post_init__(self) -> None:
        check_field_types(self)
        require(self.max_steps >= 1, "max_steps", ">= 1", self.max_steps)
        require(self.attack_mode in ATTACK_MODES, "attack_mode", f"one of {', '.join(ATTACK_MODES)}", self.attack_mode)


class SMAXGame:
    """One SMAX scenario as pure functions of (key, state, team actions), unbatched; shared by both envs.

    `reset(key)` and `step(key, state, actions (N,) int)` return `(state, raw)`, `raw` a dict of arrays:
    `obs` (N, D) f32, `mask` (N, A) f32 in the team layout (dead units: no-op only), `alive` (N,) bool, `state`
    (S,) f32, `reward` f32, `over` (a team is wiped out), `time_up`, `won`, `dead_allies`, `dead_enemies`.
    """

    def __init__(self, scenario: str, options: SMAXOptions) -> None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown SMAX scenario {scenario!r}; expected one of: {', '.join(SCENARIOS)}")
        smax = import_jaxmarl()
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp
        self.scenario, self.options = scenario, options
        if scenario in smax_scenarios.SCENARIOS:
            battle = smax_scenarios.jaxmarl_kwargs(scenario, smax)
        else:
            battle = {"scenario": smax.map_name_to_scenario(scenario)}
        self.env = smax.HeuristicEnemySMAX(
            **battle,
            max_steps=options.max_steps,
            enemy_shoots=options.enemy_shoots,
            attack_mode=options.attack_mode,
            won_battle_bonus=options.won_battle_bonus,
            see_enemy_actions=options.see_enemy_actions,
            walls_cause_death=options.walls_cause_death,
        )
        self.n_agents: int = self.env.num_allies
        self.n_enemies: int = self.env.num_enemies
        self.obs_dim: int = self.env.obs_size
        self.state_dim: int = self.env.state_size
        self.n_actions: int = self.env.num_ally_actions + 1
        # team action -> SMAX action: 0 (dead no-op) and 1 stop, 2-5 moves 0-3, 6.. attacks 5..
        self.team_to_smax = np.array(
            [SMAX_STOP, SMAX_STOP, *range(SMAX_MOVES), *range(SMAX_STOP + 1, self.env.num_ally_actions)],
            dtype=np.int32,
        )

    def _raw(self, env_state: Any, obs: dict[str, Any], reward: Any) -> dict[str, Any]:
        jnp, n = self.jnp, self.n_agents
        units = env_state.state
        alive = units.unit_alive[:n]
        enemies_alive = units.unit_alive[n:]
        smax_mask = jnp.stack([a for a in self.env.get_avail_actions(env_state).values()]).astype(jnp.float32)
        mask = jnp.concatenate(
            [(~alive)[:, None], alive[:, None], smax_mask[:, :SMAX_MOVES], smax_mask[:, SMAX_STOP + 1 :]], axis=1
        ).astype(jnp.float32)  # (N, A) team layout
        over = ~alive.any() | ~enemies_alive.any()
        return {
            "obs": jnp.stack([obs[a] for a in self.env.agents]).astype(jnp.float32),  # (N, D)
            "mask": mask,
            "alive": alive,
            "state": obs["world_state"].astype(jnp.float32),  # (S,)
            "reward": jnp.asarray(reward, dtype=jnp.float32),
            "over": over,
            "time_up": units.done,  # jaxmarl's own end flag (see the module docstring on max_steps)
            "won": ~enemies_alive.any() & alive.any(),
            "dead_allies": (~alive).sum().astype(jnp.int32),
            "dead_enemies": (~enemies_alive).sum().astype(jnp.int32),
        }

    def reset(self, key: Any) -> tuple[Any, dict[str, Any]]:
        obs, env_state = self.env.reset(key)
        return env_state, self._raw(env_state, obs, 0.0)

    def step(self, key: Any, env_state: Any, actions: Any) -> tuple[Any, dict[str, Any]]:
        smax_actions = self.jnp.asarray(self.team_to_smax)[actions]  # (N,)
        acts = {a: smax_actions[i] for i, a in enumerate(self.env.agents)}
        obs, env_state, rewards, _, _ = self.env.step_env(key, env_state, acts)
        return env_state, self._raw(env_state, obs, rewards[self.env.agents[0]])


def _fresh_seed() -> int:
    """A seed from the OS's entropy, for a first reset without one."""
    return int(np.random.SeedSequence().generate_state(1)[0] % 2**31)


def _obs_space(n: int, d: int) -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, shape=(n, d), dtype=np.float32)


class SMAXEnv(ParallelEnv):
    """One SMAX battle as a ParallelEnv of the allies `ally_0..` (module docstring); jitted single steps."""

    metadata: ClassVar[dict[str, Any]] = {"name": "smax", "render_modes": [], "is_parallelizable": True}

    def __init__(self, scenario: str, options: SMAXOptions | None = None, render_mode: str | None = None) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported by SMAX; expected None")
        self.render_mode = None
        self.game = SMAXGame(scenario, options or SMAXOptions())
        game, jax = self.game, self.game.jax
        self.possible_agents = [f"ally_{i}" for i in range(game.n_agents)]
        self.agents: list[str] = []
        self._observation_space = spaces.Dict(
            {
                "observation": spaces.Box(-np.inf, np.inf, shape=(game.obs_dim,), dtype=np.float32),
                "action_mask": spaces.Box(0, 1, shape=(game.n_actions,), dtype=np.int8),
            }
        )
        self._action_space: spaces.Space[Any] = spaces.Discrete(game.n_actions)
        self.state_space = spaces.Box(-np.inf, np.inf, shape=(game.state_dim,), dtype=np.float32)
        self._reset, self._step = jax.jit(game.reset), jax.jit(game.step)
        self._key: Any = None
        self._env_state: Any = None
        self._raw: dict[str, np.ndarray] = {}

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        """{"observation": Box (D,) float32, "action_mask": (A,) int8 in the team layout}."""
        return self._observation_space

    def action_space(self, agent: str) -> spaces.Space[Any]:
        """Discrete(A): 0 no-op (dead units only), 1 stop, 2-5 move, 6.. attack."""
        return self._action_space

    def _next_key(self) -> Any:
        self._key, sub = self.game.jax.random.split(self._key)
        return sub

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, dict[str, Any]]]:
        """A new battle; `seed` restarts the key chain at PRNGKey(seed), None continues it (or draws one)."""
        if seed is not None or self._key is None:
            start = seed if seed is not None else _fresh_seed()
            self._key = self.game.jax.random.PRNGKey(start)
        self._env_state, raw = self._reset(self._next_key())
        self._raw = {k: np.asarray(v) for k, v in raw.items()}
        self.agents = list(self.possible_agents)
        return self._observations(self.agents), self._infos(self.agents)

    def step(
        self, actions: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, Any]]:
        """One env step of the live allies (the no-op for dead ones); ends every agent when the battle ends."""
        if not self.agents:
            raise RuntimeError("SMAXEnv.step() called before reset() or after the battle ended; call reset()")
        team = np.zeros(len(self.possible_agents), dtype=np.int32)
        for agent in self.agents:
            i = int(agent.rsplit("_", 1)[1])
            act = actions.get(agent, NOOP_ACTION)
            if not 0 <= int(act) < self.game.n_actions or not self._raw["mask"][i, int(act)]:
                available = np.flatnonzero(self._raw["mask"][i]).tolist()
                raise ValueError(f"action {act!r} for agent {agent!r} is not available; available: {available}")
            team[i] = int(act)
        live = self.agents
        self._env_state, raw = self._step(self._next_key(), self._env_state, team)
        self._raw = {k: np.asarray(v) for k, v in raw.items()}
        over, time_up, alive = bool(self._raw["over"]), bool(self._raw["time_up"]), self._raw["alive"]
        dead = {a: not alive[int(a.rsplit("_", 1)[1])] for a in live}
        terminations = {a: over or dead[a] for a in live}
        truncations = {a: time_up and not terminations[a] for a in live}
        ended = over or time_up
        self.agents = [] if ended else [a for a in live if not dead[a]]
        rewards = dict.fromkeys(self.possible_agents, float(self._raw["reward"]))
        return self._observations(live), rewards, terminations, truncations, self._infos(live)

    def state(self) -> np.ndarray:
        """SMAX's world state (S,) float32."""
        return self._raw["state"]

    def render(self) -> None:
        return None

    def close(self) -> None:
        self._env_state = None

    def _observations(self, agents: list[str]) -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for a in agents:
            i = int(a.rsplit("_", 1)[1])
            out[a] = {"observation": self._raw["obs"][i], "action_mask": self._raw["mask"][i].astype(np.int8)}
        return out

    def _infos(self, agents: list[str]) -> dict[str, dict[str, Any]]:
        facts = {
            "won": bool(self._raw["won"]),
            "dead_allies": int(self._raw["dead_allies"]),
            "dead_enemies": int(self._raw["dead_enemies"]),
        }
        return {a: dict(facts) for a in agents}


class SMAXVectorEnv(gymnasium.vector.VectorEnv):
    """`num_envs` SMAX battles in one jitted step, each seen as the team env of `SMAXEnv` (module docstring).

    Args:
        scenario: one of `SCENARIOS`.
        options: the battle's options.
        num_envs: B >= 1.
        team_reward, use_state, history: as `TeamEnv`.

    Observations are dicts of arrays with a leading B axis: `obs` (B, N, D), `action_mask` (B, N, A), `alive`
    (B, N), [`state` (B, S)], [`history` (B, L, N, D)]; actions are ints (B, N).
    """

    def __init__(
        self,
        scenario: str,
        options: SMAXOptions | None = None,
        *,
        num_envs: int,
        team_reward: str = "mean",
        use_state: bool = False,
        history: int = 0,
    ) -> None:
        check_team_args(team_reward, history)
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}; expected an integer >= 1")
        self.game = game = SMAXGame(scenario, options or SMAXOptions())
        self.num_envs, self.use_state, self.history = num_envs, use_state, history
        self.team_reward = team_reward
        self.n_agents, self.n_actions, self.obs_dim = game.n_agents, game.n_actions, game.obs_dim
        n, a, d = self.n_agents, self.n_actions, self.obs_dim
        single: dict[str, spaces.Space[Any]] = {
            "obs": _obs_space(n, d),
            "action_mask": spaces.Box(0.0, 1.0, shape=(n, a), dtype=np.float32),
            "alive": spaces.Box(0.0, 1.0, shape=(n,), dtype=np.float32),
        }
        if use_state:
            single["state"] = spaces.Box(-np.inf, np.inf, shape=(game.state_dim,), dtype=np.float32)
        if history:
            low = np.full((n, d), -np.inf, dtype=np.float32)
            single["history"] = HistoryWindow(history, (n, d)).space(low, -low)
        self.single_observation_space: spaces.Dict = spaces.Dict(single)
        self.single_action_space: spaces.MultiDiscrete = spaces.MultiDiscrete(np.full(n, a, dtype=np.int64))
        self.observation_space = gymnasium.vector.utils.batch_space(self.single_observation_space, num_envs)
        self._mask = np.zeros((num_envs, n, a), dtype=np.float32)
        self._mask[:, :, NOOP_ACTION] = 1.0
        self.action_space: AvailableTeamActions = AvailableTeamActions(self._mask)
        self.render_mode = None
        self.metadata = {"autoreset_mode": gymnasium.vector.AutoresetMode.NEXT_STEP, "render_modes": []}
        self._alive = np.zeros((num_envs, n), dtype=bool)
        self._resetting = np.zeros(num_envs, dtype=bool)  # NEXT_STEP: these envs reset on the next step()
        self._carry: Any = None  # (keys (B, 2), batched jaxmarl state, history window (B, L, N, D) or None)
        jax = game.jax
        self._jit_reset = jax.jit(self._reset_all)
        self._jit_step = jax.jit(self._step_all)

    # ------------------------------------------------------------------ jitted (B envs at once)

    def _split(self, keys: Any) -> tuple[Any, Any]:
        pairs = self.game.jax.vmap(self.game.jax.random.split)(keys)  # (B, 2, 2)
        return pairs[:, 0], pairs[:, 1]

    def _team(self, raw: dict[str, Any], resetting: Any, window: Any) -> tuple[dict[str, Any], Any]:
        """Raw game outputs (B, ...) -> the team env's transition (rules in the module docstring)."""
        jnp = self.game.jnp
        alive = raw["alive"] & ~raw["over"][:, None]  # (B, N): the whole team ends with a terminated battle
        obs = jnp.where(alive[..., None], raw["obs"], 0.0)  # (B, N, D)
        finite = jnp.isfinite(obs)
        noop = jnp.zeros(self.n_actions, dtype=jnp.float32).at[NOOP_ACTION].set(1.0)
        scale = float(self.n_agents) if self.team_reward == "sum" else 1.0
        out = {
            "obs": jnp.where(finite, obs, 0.0),
            "action_mask": jnp.where(alive[..., None], raw["mask"], noop),  # (B, N, A)
            "alive": alive.astype(jnp.float32),
            "nonfinite_obs": ~finite.all(axis=(1, 2)),
            "reward": jnp.where(resetting, 0.0, raw["reward"] * scale),
            "agent_reward": raw["reward"],
            "terminated": raw["over"] & ~resetting,
            "truncated": raw["time_up"] & ~raw["over"] & ~resetting,
            "won": raw["won"],
            "dead_allies": raw["dead_allies"],
            "dead_enemies": raw["dead_enemies"],
        }
        if self.use_state:
            finite_state = jnp.isfinite(raw["state"])
            out["state"] = jnp.where(finite_state, raw["state"], 0.0)
            out["nonfinite_state"] = ~finite_state.all(axis=1)
        if window is not None:
            kept = jnp.where(resetting[:, None, None, None], 0.0, window[:, 1:])  # (B, L-1, N, D)
            window = jnp.concatenate([kept, out["obs"][:, None]], axis=1)  # (B, L, N, D), this step last
            out["history"] = window
        return out, window

    def _reset_all(self, keys: Any) -> tuple[Any, dict[str, Any]]:
        jax, jnp = self.game.jax, self.game.jnp
        keys, subs = self._split(keys)
        env_state, raw = jax.vmap(self.game.reset)(subs)
        # jaxmarl's reset leaves a weakly typed leaf that its step makes strong; without this the step would
        # compile twice (once for the carry of a reset, once for its own).
        env_state = jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), env_state)
        b = self.num_envs
        window = jnp.zeros((b, self.history, self.n_agents, self.obs_dim), jnp.float32) if self.history else None
        out, window = self._team(raw, jnp.ones(b, dtype=bool), window)
        return (keys, env_state, window), out

    def _step_all(self, carry: Any, resetting: Any, actions: Any) -> tuple[Any, dict[str, Any]]:
        jax, jnp = self.game.jax, self.game.jnp
        keys, env_state, window = carry
        keys, subs = self._split(keys)
        was_alive = env_state.state.unit_alive[:, : self.n_agents]  # (B, N)
        actions = jnp.where(was_alive, actions, NOOP_ACTION)  # a dead unit's action is ignored
        stepped = jax.vmap(self.game.step)(subs, env_state, actions)

        def pick(new: Any, old: Any) -> Any:
            return jnp.where(resetting.reshape(-1, *([1] * (new.ndim - 1))), new, old)

        def with_resets() -> Any:
            return jax.tree.map(pick, jax.vmap(self.game.reset)(subs), stepped)

        # Resets cost about a quarter of a step: compute them only on steps where some env needs one.
        env_state, raw = jax.lax.cond(resetting.any(), with_resets, lambda: stepped)
        out, window = self._team(raw, resetting, window)
        return (keys, env_state, window), out

    # ------------------------------------------------------------------ gymnasium VectorEnv API

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset every env; env b's key chain restarts at PRNGKey(seed + b) (or seed[b]); None continues it."""
        jax, jnp = self.game.jax, self.game.jnp
        if seed is not None or self._carry is None:
            if seed is None:
                seed = _fresh_seed()
            seeds = list(seed) if isinstance(seed, list | tuple) else [seed + b for b in range(self.num_envs)]
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset got {len(seeds)} seeds for {self.num_envs} envs; expected one per env")
            keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds, dtype=jnp.uint32))
        else:
            keys = self._carry[0]
        self._carry, out = self._jit_reset(keys)
        self._resetting[:] = False
        obs, _, _, _, infos = self._unpack(out, np.ones(self.num_envs, dtype=bool))
        return obs, infos

    def step(self, actions: Any) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every env (a fresh battle for those that ended on the previous step)."""
        if self._carry is None:
            raise RuntimeError("SMAXVectorEnv.step() called before reset(); call reset()")
        acts = self._check_actions(actions)
        resetting = self._resetting.copy()
        self._carry, out = self._jit_step(self._carry, resetting, acts)
        obs, reward, terminated, truncated, infos = self._unpack(out, resetting)
        self._resetting = terminated | truncated
        return obs, reward, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        self._carry = None

    # ------------------------------------------------------------------ host side

    def _check_actions(self, actions: Any) -> np.ndarray:
        checked = ~self._resetting[:, None] & self._alive  # (B, N): ended envs and dead agents are ignored
        return check_team_actions(actions, self._mask, checked, "ally").astype(np.int32)

    def _unpack(
        self, out: dict[str, Any], resetting: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """Views of the jitted outputs (no copies) as the VectorEnv's obs, reward, dones and info dict."""
        view = {key: np.asarray(value) for key, value in out.items()}
        obs = {key: view[key] for key in self.single_observation_space.spaces}
        self._mask, self._alive = view["action_mask"], view["alive"] > 0
        self.action_space.available = self._mask
        everywhere = np.ones(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        for key in ("won", "dead_allies", "dead_enemies"):
            infos[key], infos[f"_{key}"] = view[key], everywhere
        if not resetting.all():  # a reset's info has no rewards (as TeamEnv's)
            agent_rewards = np.repeat(view["agent_reward"].astype(np.float64)[:, None], self.n_agents, axis=1)
            infos["agent_rewards"], infos["_agent_rewards"] = agent_rewards, ~resetting
        for key in ("nonfinite_obs", "nonfinite_state"):
            if key in view and view[key].any():  # present only where it happened, as in TeamEnv
                infos[key], infos[f"_{key}"] = view[key], view[key]
        reward = view["reward"].astype(np.float64)
        return obs, reward, view["terminated"], view["truncated"], infos


def smax_env(scenario: str, options: SMAXOptions, render_mode: str | None = None) -> SMAXEnv:
    """The registry factory of `smax_<scenario>`: one battle as a ParallelEnv (for `TeamEnv`)."""
    return SMAXEnv(scenario, options, render_mode=render_mode)


def smax_vector_env(
    scenario: str, options: SMAXOptions, num_envs: int, team_reward: str, use_state: bool, history: int
) -> SMAXVectorEnv:
    """The registry's vector factory of `smax_<scenario>`: `num_envs` battles in one jitted step."""
    return SMAXVectorEnv(
        scenario, options, num_envs=num_envs, team_reward=team_reward, use_state=use_state, history=history
    )
