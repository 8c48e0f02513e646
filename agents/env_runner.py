"""`TeamEnvRunner`: RLlib's SingleAgentEnvRunner with a batched sampling loop for team envs.

RLlib 2.60's `SingleAgentEnvRunner` timestep loop unbatches every vector-env step into B per-env items, runs them
through the env-to-module and module-to-env connector pipelines and appends them one at a time to B episode
objects: Python work per env per step that cost more than the policy forward here (docs/BENCHMARKS.md). For a
team env that work is mechanical - the observation is a dict of fixed-shape arrays, the action a MultiDiscrete
vector, the module stateless - so this runner keeps every step as the batched arrays the vector env and the
module produce, and cuts them into `SingleAgentEpisode` chunks once per `sample()` call (numpy slices, no
per-step Python per env).

The chunks hold what RLlib's loop records: the observations (including the last one, for bootstrapping),
actions, rewards, terminated / truncated, infos, and every extra output of the module (action log-prob,
distribution inputs, the early-exit depth, the weights' sequence number). Actions are drawn exactly as RLlib's
`GetActions` connector draws them (the module's exploration or inference distribution class). Chunks of one
episode share its id and continue its `t_started`, so the learner's connectors and the PPO loss see the same
batch as with RLlib's loop; `tests/agents/test_env_runner.py` checks the two loops give identical episodes.

Differences from RLlib's loop, by design:
- per-episode callbacks (`on_episode_created/start/step/end`) are not made; `on_sample_end` (where this project
  counts non-finite steps) and `on_environment_created` are. A config with per-episode callbacks, custom
  connectors or a stateful module falls back to RLlib's loop, as do `random_actions` and episode-count sampling.
- episode chunks carry no lookback buffer (PPO's learner connectors read none).
- the runner also logs `episode_win_rate` over finished episodes whose last info has a `won` flag.
- the chunks `sample()` returns carry empty infos (one `{}` per step): `on_sample_end` callbacks have read the
  real ones (agents/faults.py counts flagged steps there), and nothing after the runner reads them. Shipped to
  the driver, per-step info dicts of numpy scalars were most of the time to pickle and unpickle the chunks
  (docs/BENCHMARKS.md, "Figures behind code choices").
"""

from __future__ import annotations

import gc
import time
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.core.columns import Columns
from ray.rllib.env.env_runner import ENV_STEP_FAILURE
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import RLMODULE_INFERENCE_TIMER, WEIGHTS_SEQ_NO

from agents.rl_module import GATE_OPEN
from agents.rllib_private import (
    SampleLoopHook,
    act_exploring,
    act_greedy,
    env_runner_callbacks,
    env_runner_device,
    env_runner_weights_seq_no,
    has_custom_connectors,
    log_finished_episode,
    log_sampled_steps,
    needs_env_reset,
    record_env_errors,
    reset_envs,
    step_envs,
)

EPISODE_WIN_RATE = "episode_win_rate"
"""Mean of the `won` flag over the last finished episodes (same window as RLlib's episode_return_mean)."""

_EPISODE_CALLBACKS = ("on_episode_created", "on_episode_start", "on_episode_step", "on_episode_end")


def _new_id() -> str:
    return uuid.uuid4().hex


def _tensor(array: Any, device: torch.device) -> torch.Tensor:
    """Zero-copy numpy -> torch on CPU. Read-only arrays (SMAX hands out views of jax buffers) are shared as
    they are: the module only reads its observations."""
    array = np.asarray(array)
    if array.flags.writeable:
        return torch.from_numpy(array).to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array).to(device)


@dataclass
class _Open:
    """What carries over between `sample()` calls, per env of the vector env (B envs)."""

    obs: dict[str, np.ndarray]  # (B, ...) each env's current observation
    infos: list[dict[str, Any]]  # each env's current info
    resetting: np.ndarray  # (B,) bool: the episode ended at the last step, so gymnasium's next step resets the env
    ids: list[str]  # id of each env's current episode
    t_started: np.ndarray  # (B,) int: env steps of the current episode already returned in earlier chunks
    returns: np.ndarray  # (B,) float: return of those earlier chunks
    started_at: np.ndarray  # (B,) float: wall time at the episode's first step


@dataclass
class _Rollout:
    """One `sample()` call's steps as batched arrays: T steps of B envs."""

    obs: list[dict[str, np.ndarray]]  # T + 1 observations (B, ...); obs[t] is what step t acted on
    infos: list[list[dict[str, Any]]]  # T + 1 lists of B infos
    actions: list[np.ndarray]  # T x (B, N)
    rewards: list[np.ndarray]  # T x (B,)
    terminated: list[np.ndarray]  # T x (B,) bool
    truncated: list[np.ndarray]  # T x (B,) bool
    valid: list[np.ndarray]  # T x (B,) bool: a real transition (False: the env was resetting at that step)
    extras: list[dict[str, np.ndarray]]  # T x the module's extra outputs, (B, ...)
    times: list[float]  # T + 1 wall times

    @classmethod
    def start(cls, open_: _Open) -> _Rollout:
        return cls([open_.obs], [open_.infos], [], [], [], [], [], [], [time.time()])


@dataclass(frozen=True)
class _Segment:
    """One episode chunk of one env: transitions first..last (inclusive) of the rollout."""

    env: int
    first: int
    last: int
    continues: bool  # the chunk continues the episode that was open when the call began


class _GateFacts:
    """The sampled gate open rate of the alive agents for which an env fact holds and of the others (the env's
    `fact_names`, e.g. predator-prey's `saw_prey`: the agent holds information the others may lack), counted over a
    `sample()` call with the facts of the observation the gates decided on."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.counts = {name: np.zeros(4) for name in names}  # open & fact, fact, open & not fact, not fact

    def count(self, decisions: np.ndarray | None, alive: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """One vector step: decisions and alive (B, N), each env's info (its facts (N,))."""
        if decisions is None or not self.names:
            return
        live = np.asarray(alive) > 0
        opened = (decisions > 0) & live
        for name in self.names:
            fact = np.stack([np.asarray(info.get(name, np.zeros(live.shape[1]))) > 0 for info in infos])  # (B, N)
            open_other, other = opened & ~fact, live & ~fact
            self.counts[name] += [(opened & fact).sum(), (live & fact).sum(), open_other.sum(), other.sum()]

    def rates(self) -> dict[str, float]:
        """`gate_open_rate_if_<fact>` and `gate_open_rate_unless_<fact>` where there were agent-steps of each."""
        out = {}
        for name, (open_true, n_true, open_false, n_false) in self.counts.items():
            if n_true:
                out[f"gate_open_rate_if_{name}"] = float(open_true / n_true)
            if n_false:
                out[f"gate_open_rate_unless_{name}"] = float(open_false / n_false)
        return out


def _segments(valid: np.ndarray) -> list[_Segment]:
    """Episode chunks of each env: maximal runs of consecutive valid transitions.

    With gymnasium's next-step autoreset, the step after an episode's last transition is the env's reset (not a
    transition), so consecutive valid steps always belong to one episode, and a run that starts at step 0 continues
    the episode that was open when the call began (an env resetting at step 0 has no valid step 0). valid: (T, B).
    """
    out = []
    for env in range(valid.shape[1]):
        steps = np.flatnonzero(valid[:, env])
        if steps.size == 0:
            continue
        breaks = np.flatnonzero(np.diff(steps) > 1)
        firsts = np.concatenate(([steps[0]], steps[breaks + 1]))
        lasts = np.concatenate((steps[breaks], [steps[-1]]))
        for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
            out.append(_Segment(env, first, last, continues=first == 0))
    return out


MAX_ENV_FAILURES_PER_SAMPLE = 10
"""Env errors one `sample()` call survives. Each rebuilds the runner's envs and starts the call over (RLlib's rule,
docs/DESIGN.md "Faults"), so an env that fails more often than once per call would sample forever without a batch:
the runner stops it with `EnvFailingError` instead."""


class EnvFailingError(RuntimeError):
    """The env raised `MAX_ENV_FAILURES_PER_SAMPLE` times within one `sample()` call."""


class TeamEnvRunner(SampleLoopHook):
    """SingleAgentEnvRunner whose timestep sampling records batched arrays and builds episodes once per call."""

    @override(SingleAgentEnvRunner)
    def __init__(self, *, config: Any, **kwargs: Any) -> None:
        super().__init__(config=config, **kwargs)
        self._open: _Open | None = None
        self._batched = False  # whether the last `sample_loop` call ran the batched loop
        self._env_errors = record_env_errors()
        # What the runner built lives as long as it does: no full collection walks it again (agents/algorithm.py
        # `CommFormerPPO.setup`); garbage from the construction is collected first rather than frozen.
        gc.collect()
        gc.freeze()

    @override(SingleAgentEnvRunner)
    def sample(self, *args: Any, **kwargs: Any) -> Any:
        """RLlib's `sample()` (weights, `on_sample_end`, metrics); the batched loop's chunks then drop their infos."""
        episodes = super().sample(*args, **kwargs)
        if self._batched:
            for episode in episodes:
                episode.infos = InfiniteLookbackBuffer([{} for _ in range(len(episode.infos))], lookback=0)
        return episodes

    def _batched_loop_applies(self, num_timesteps: int | None, random_actions: bool) -> bool:
        if num_timesteps is None or random_actions or self.module is None or self.module.is_stateful():
            return False
        config = self.config
        if has_custom_connectors(config):
            return False
        for name in _EPISODE_CALLBACKS:
            if getattr(config, f"callbacks_{name}", None):
                return False
            if any(getattr(type(cb), name) is not getattr(RLlibCallback, name) for cb in env_runner_callbacks(self)):
                return False
        return True

    @override(SampleLoopHook)
    def sample_loop(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[SingleAgentEpisode]:
        """The batched loop where it applies (module docstring), RLlib's loop otherwise."""
        self._batched = self._batched_loop_applies(num_timesteps, random_actions)
        if not self._batched:
            self._open = None  # RLlib's loop owns the envs now: reset when the batched loop takes over again
            return self.rllib_sample_loop(
                num_timesteps=num_timesteps,
                num_episodes=num_episodes,
                explore=explore,
                random_actions=random_actions,
                force_reset=force_reset,
            )
        assert num_timesteps is not None
        if force_reset or self._open is None or needs_env_reset(self):
            self._reset_all()
        assert isinstance(self.module, torch.nn.Module) and self._open is not None
        self.module.eval()
        episodes: list[SingleAgentEpisode] = []
        rollout = _Rollout.start(self._open)
        ts = failures = 0
        self._env_errors.last = None  # an error logged before this call is not this call's
        gates = _GateFacts(getattr(self.env.unwrapped, "fact_names", ()))
        while ts < num_timesteps:
            actions, extras = self._act(rollout.obs[-1], explore, ts)
            gates.count(extras.get(GATE_OPEN), rollout.obs[-1]["alive"], rollout.infos[-1])
            results = step_envs(self, actions)
            if results is ENV_STEP_FAILURE:
                failures += 1
                if failures >= MAX_ENV_FAILURES_PER_SAMPLE:
                    raise EnvFailingError(self._env_failing_message(failures, num_timesteps))
                # As RLlib's loop: keep the episodes that finished, drop the unfinished ones, start afresh.
                episodes += [ep for ep in self._cut(rollout, keep_open=False) if ep.is_done]
                self._reset_all()
                rollout = _Rollout.start(self._open)
                ts = 0
                continue
            obs, rewards, terminated, truncated, infos = results
            valid = ~self._open.resetting
            rollout.obs.append(obs)
            rollout.infos.append(infos)
            rollout.actions.append(actions)
            rollout.rewards.append(np.asarray(rewards, dtype=np.float64))
            rollout.terminated.append(np.asarray(terminated, dtype=bool))
            rollout.truncated.append(np.asarray(truncated, dtype=bool))
            rollout.valid.append(valid)
            rollout.extras.append(extras)
            rollout.times.append(time.time())
            self._open.resetting = (rollout.terminated[-1] | rollout.truncated[-1]) & valid
            ts += int(valid.sum())
        episodes += self._cut(rollout, keep_open=True)
        for key, rate in gates.rates().items():
            self.metrics.log_value(key, rate, window=1)
        finished = sum(ep.is_done for ep in episodes)
        log_sampled_steps(self, ts, finished)
        return episodes

    def _env_failing_message(self, failures: int, num_timesteps: int) -> str:
        error = self._env_errors.last or "see the EnvRunner's log"
        return (
            f"the env raised in step() {failures} times within one sample() call of {num_timesteps:,} env steps; each "
            "time the envs were rebuilt and the call started over, so at this rate no batch ever completes. The last "
            f"error: {error}. Fix the env (faults.restart_failed_envs=false stops a run at the first env error, with "
            "its traceback)"
        )

    def _reset_all(self) -> None:
        obs, infos = reset_envs(self)
        n = self.num_envs
        self._open = _Open(
            obs=obs,
            infos=list(infos),
            resetting=np.zeros(n, dtype=bool),
            ids=[_new_id() for _ in range(n)],
            t_started=np.zeros(n, dtype=np.int64),
            returns=np.zeros(n),
            started_at=np.full(n, time.time()),
        )

    @torch.no_grad()
    def _act(self, obs: dict[str, np.ndarray], explore: bool, ts: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One batched forward and action draw, as RLlib's connectors + GetActions would do it."""
        module = self.module
        assert module is not None
        device = env_runner_device(self)
        batch = {Columns.OBS: {k: _tensor(v, device) for k, v in obs.items()}}
        with self.metrics.log_time(RLMODULE_INFERENCE_TIMER):
            # Not the public forwards: they toggle eval()/train() over every submodule at every step
            # (docs/BENCHMARKS.md, "Figures behind code choices"); `sample_loop` puts the module in eval mode once.
            if explore:
                runners = self.config.num_env_runners or 1
                t = (self.num_env_steps_sampled_lifetime // runners + ts) * runners
                out = act_exploring(module, batch, t)
            else:
                out = act_greedy(module, batch)
            # Actions the module chose itself (the autoregressive decoder) are taken as they are, as GetActions does.
            actions = cast(torch.Tensor | None, out.get(Columns.ACTIONS))
            if actions is None:
                explorer = module.get_exploration_action_dist_cls if explore else module.get_inference_action_dist_cls
                dist = explorer().from_logits(out[Columns.ACTION_DIST_INPUTS])
                if not explore:
                    dist = dist.to_deterministic()
                actions = cast(torch.Tensor, dist.sample())
                if Columns.ACTION_LOGP not in out:
                    out[Columns.ACTION_LOGP] = dist.logp(actions)
        extras = {k: cast(torch.Tensor, v).cpu().numpy() for k, v in out.items() if k != Columns.ACTIONS}
        space = self.env.single_action_space  # type: ignore[union-attr]
        return actions.cpu().numpy().astype(space.dtype, copy=False), extras

    def _cut(self, rollout: _Rollout, keep_open: bool) -> list[SingleAgentEpisode]:
        """The rollout's episode chunks; logs the episodes that finished; updates what stays open per env."""
        open_ = self._open
        assert open_ is not None
        steps = len(rollout.actions)
        if steps == 0:
            return []
        obs = {k: np.stack([o[k] for o in rollout.obs]) for k in rollout.obs[0]}  # (T + 1, B, ...)
        actions = np.stack(rollout.actions)
        rewards = np.stack(rollout.rewards)
        terminated = np.stack(rollout.terminated)
        truncated = np.stack(rollout.truncated)
        valid = np.stack(rollout.valid)
        extras = {k: np.stack([e[k] for e in rollout.extras]) for k in rollout.extras[0]}
        obs_space, act_space = self.env.single_observation_space, self.env.single_action_space  # type: ignore[union-attr]

        episodes = []
        for seg in _segments(valid):
            env, first, last = seg.env, seg.first, seg.last
            span = slice(first, last + 1)
            done = bool(terminated[last, env] or truncated[last, env])
            chunk_return = float(rewards[span, env].sum())
            if seg.continues:
                eid, t_started = open_.ids[env], int(open_.t_started[env])
                prior_return, started_at = float(open_.returns[env]), float(open_.started_at[env])
            else:
                eid, t_started, prior_return, started_at = _new_id(), 0, 0.0, rollout.times[first]
            extra = {k: v[span, env] for k, v in extras.items()}
            extra[WEIGHTS_SEQ_NO] = np.full(last + 1 - first, env_runner_weights_seq_no(self))
            # Numpy data where RLlib's signature says lists: what its own `to_numpy()` leaves in an episode.
            data: dict[str, Any] = {
                "observations": {k: v[first : last + 2, env] for k, v in obs.items()},
                "actions": actions[span, env],
                "rewards": rewards[span, env],
            }
            episodes.append(
                SingleAgentEpisode(
                    eid,
                    **data,
                    observation_space=obs_space,
                    infos=[rollout.infos[t][env] for t in range(first, last + 2)],
                    action_space=act_space,
                    terminated=bool(terminated[last, env]),
                    truncated=bool(truncated[last, env]),
                    extra_model_outputs=extra,
                    t_started=t_started,
                    len_lookback_buffer=0,
                )
            )
            length = t_started + last + 1 - first
            if done:
                won = rollout.infos[last + 1][env].get("won")
                self._log_finished(length, prior_return + chunk_return, rollout.times[last + 1] - started_at, won)
            if last == steps - 1 or done:
                # The state that stays open for this env: a new episode after a done, else this one, continued.
                open_.ids[env] = _new_id() if done else eid
                open_.t_started[env] = 0 if done else length
                open_.returns[env] = 0.0 if done else prior_return + chunk_return
                open_.started_at[env] = rollout.times[-1] if done else started_at
        if keep_open:
            open_.obs, open_.infos = rollout.obs[-1], rollout.infos[-1]
        return episodes

    def _log_finished(self, length: int, ret: float, seconds: float, won: Any) -> None:
        log_finished_episode(self, length, ret, seconds)
        if won is not None:
            window = max(1, -(-self.config.metrics_num_episodes_for_smoothing // (self.config.num_env_runners or 1)))
            self.metrics.log_value(EPISODE_WIN_RATE, float(bool(won)), window=window)
