"""A stand-in of smacv2's `StarCraftCapabilityEnvWrapper` for tests that run without StarCraft II.

It has the real API's methods, argument and return types (read from smacv2's source: wrapper.py,
starcraft2.py): `reset() -> (obs list, state)`, `step(actions) -> (reward, terminated, info)` with info
`battle_won`, `dead_allies`, `dead_enemies`, and `(0, True, {})` on a protocol error; `get_obs()` a list of float32
arrays (zeros for dead units), `get_state()`, `get_avail_actions()` a list of Python lists of 0/1 ints (a dead
unit: the no-op alone; a live unit: never the no-op, always stop), `get_env_info()` with the real keys, and the
same assertions as smacv2 on unavailable actions. Like the real wrapper it requires `capability_config` with
n_units, n_enemies, team_gen and start_positions, and builds its team sizes from them.

The battle is a scripted toy, fully known to the tests: action 6 + t attacks enemy t and kills it at once;
allied units die at the steps given in `ally_deaths`; a unit can move north (2) only on even steps; unit i can
attack enemy t only when (i + t) is even or the enemy is the last one. The reward is the number of enemies killed
in the step, plus 10 for a win. `protocol_error_at` makes that step fail like a lost websocket.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_NO_ATTACK = 6
"""no-op, stop, 4 moves (smacv2 with conic_fov=False)."""


class StandInCapabilityEnv:
    """The stand-in (module docstring). Construct it with the kwargs the adapter passes to the real wrapper."""

    def __init__(
        self,
        *,
        capability_config: dict[str, Any],
        map_name: str,
        episode_limit: int = 12,
        ally_deaths: dict[int, list[int]] | None = None,
        protocol_error_at: int | None = None,
        reset_returns_none: bool = False,
        **kwargs: Any,
    ) -> None:
        for key in ("n_units", "n_enemies", "team_gen", "start_positions"):
            assert key in capability_config, f"capability_config lacks {key!r}"
        assert map_name in ("10gen_protoss", "10gen_terran", "10gen_zerg"), map_name
        self.kwargs = {"capability_config": capability_config, "map_name": map_name, **kwargs}
        self.n_agents = int(capability_config["n_units"])
        self.n_enemies = int(capability_config["n_enemies"])
        self.n_actions = N_NO_ATTACK + self.n_enemies
        self.episode_limit = episode_limit
        self.ally_deaths = ally_deaths or {}
        self.protocol_error_at = protocol_error_at
        self.reset_returns_none = reset_returns_none
        self.obs_size = 4 + 2 * self.n_enemies + self.n_agents
        self.state_size = 2 * self.n_agents + self.n_enemies + self.n_agents * self.n_actions
        self.received: list[list[int]] = []
        self.launched = False
        self.closed = False
        self.restarts = 0
        self._t = 0
        self._ally_alive = np.ones(self.n_agents, dtype=bool)
        self._enemy_alive = np.ones(self.n_enemies, dtype=bool)
        self._last_action = np.zeros((self.n_agents, self.n_actions))

    # ------------------------------------------------------------------ the smacv2 API

    def get_env_info(self) -> dict[str, Any]:
        return {
            "state_shape": self.state_size,
            "obs_shape": self.obs_size,
            "cap_shape": 3,
            "n_actions": self.n_actions,
            "n_agents": self.n_agents,
            "episode_limit": self.episode_limit,
        }

    def reset(self) -> tuple[list[np.ndarray], np.ndarray] | None:
        self.launched = True
        self._t = 0
        self._ally_alive[:] = True
        self._enemy_alive[:] = True
        self._last_action[:] = 0
        if self.reset_returns_none:  # smacv2's retry after CannotResetException drops the return value
            return None
        return self.get_obs(), self.get_state()

    def step(self, actions: list[int]) -> tuple[float, bool, dict[str, Any]]:
        actions_int = [int(a) for a in actions]
        assert len(actions_int) == self.n_agents, f"{len(actions_int)} actions for {self.n_agents} units"
        avail = self.get_avail_actions()
        for a_id, action in enumerate(actions_int):
            assert avail[a_id][action] == 1, f"Agent {a_id} cannot perform action {action}"
        self.received.append(actions_int)
        self._last_action = np.eye(self.n_actions)[np.array(actions_int)]
        if self.protocol_error_at is not None and self._t + 1 == self.protocol_error_at:
            self.restarts += 1  # smacv2 calls full_restart() and gives up on the episode
            return 0, True, {}
        self._t += 1
        killed = 0
        for action in actions_int:
            target = action - N_NO_ATTACK
            if target >= 0 and self._enemy_alive[target]:
                self._enemy_alive[target] = False
                killed += 1
        for unit in self.ally_deaths.get(self._t, []):
            self._ally_alive[unit] = False
        info: dict[str, Any] = {
            "battle_won": False,
            "dead_allies": int((~self._ally_alive).sum()),
            "dead_enemies": int((~self._enemy_alive).sum()),
        }
        reward = float(killed)
        terminated = False
        if not self._enemy_alive.any():
            terminated, info["battle_won"] = True, True
            reward += 10.0
        elif not self._ally_alive.any() or self._t >= self.episode_limit:
            terminated = True
        return reward, terminated, info

    def get_obs(self) -> list[np.ndarray]:
        return [self.get_obs_agent(i) for i in range(self.n_agents)]

    def get_obs_agent(self, agent_id: int) -> np.ndarray:
        obs = np.zeros(self.obs_size, dtype=np.float32)
        if not self._ally_alive[agent_id]:
            return obs
        obs[0] = self._t / self.episode_limit
        obs[1] = agent_id
        obs[4 : 4 + self.n_enemies] = self._enemy_alive
        obs[4 + 2 * self.n_enemies :] = self._ally_alive
        return obs

    def get_state(self) -> np.ndarray:
        state = np.concatenate(
            [self._ally_alive, np.full(self.n_agents, self._t), self._enemy_alive, self._last_action.reshape(-1)]
        )
        return state.astype(np.float32)

    def get_avail_agent_actions(self, agent_id: int) -> list[int]:
        if not self._ally_alive[agent_id]:
            return [1] + [0] * (self.n_actions - 1)
        avail = [0] * self.n_actions
        avail[1] = 1  # stop
        avail[2] = int(self._t % 2 == 0)  # north, blocked on odd steps
        avail[3] = avail[4] = avail[5] = 1
        for t in range(self.n_enemies):
            in_range = (agent_id + t) % 2 == 0 or t == self.n_enemies - 1
            avail[N_NO_ATTACK + t] = int(bool(self._enemy_alive[t]) and in_range)
        return avail

    def get_avail_actions(self) -> list[list[int]]:
        return [self.get_avail_agent_actions(i) for i in range(self.n_agents)]

    def render(self, mode: str = "human") -> np.ndarray:
        return np.zeros((8, 8, 3), dtype=np.uint8)

    def close(self) -> None:
        self.closed = True


def standin_factory(**settings: Any) -> Any:
    """A factory for `SMACv2Env(factory=...)`: builds the stand-in from the adapter's kwargs plus `settings`;
    the last built stand-in is `factory.built`."""

    def factory(kwargs: dict[str, Any]) -> StandInCapabilityEnv:
        env = StandInCapabilityEnv(**kwargs, **settings)
        factory.built = env  # type: ignore[attr-defined]
        return env

    return factory
