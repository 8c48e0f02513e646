"""Faults a run survives, how they are counted, and when a run gives up (docs/DESIGN.md, "Faults").

What survives what:
- A remote EnvRunner that dies is restarted by RLlib (`faults.restart_env_runners`); the count is RLlib's
  `fault_tolerance/num_remote_worker_restarts`.
- An env that raises in `reset()` / `step()` is rebuilt by RLlib (`faults.restart_failed_envs`, RLlib's
  `restart_failed_sub_environments`); the episodes in flight on that EnvRunner are dropped, and the count is
  RLlib's `env_runners/num_env_step_failures`.
- A non-finite observation or state is set to 0 by `TeamEnv` and flagged in its info; `NonFiniteCounter`
  counts the flagged steps (`env_runners/nonfinite_obs_steps`).
- A non-finite loss or gradient makes the learner skip that update (`learners/default_policy/skipped_updates`).
- A run whose iterations keep seeing non-finite values stops with `FaultLimitError` (`FaultTracker`).

`check_resources` compares what the config reserves with what the Ray cluster has, so that a config asking for
a GPU (or a custom resource) that no node has fails at once with a message instead of waiting forever for an
actor that cannot be placed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ray.rllib.callbacks.callbacks import RLlibCallback

from agents.config import ConfigError, ExperimentConfig

NONFINITE_OBS_STEPS = "nonfinite_obs_steps"
"""EnvRunner metric (lifetime sum): env steps whose observation or state had a NaN / inf (zeroed by TeamEnv)."""


class FaultLimitError(RuntimeError):
    """The run kept producing non-finite values for `faults.max_bad_iterations` iterations in a row."""


class NonFiniteCounter(RLlibCallback):
    """Counts the env steps that `TeamEnv` flagged as carrying a non-finite observation or state."""

    def on_episode_step(self, *, episode: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        info = episode.get_infos(-1)
        if info.get("nonfinite_obs") or info.get("nonfinite_state"):
            metrics_logger.log_value(NONFINITE_OBS_STEPS, 1, reduce="lifetime_sum")


# (name shown to the user, path in the result dict); every counter is a lifetime total.
COUNTERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("env_errors", ("env_runners", "num_env_step_failures")),
    ("env_runner_restarts", ("fault_tolerance", "num_remote_worker_restarts")),
    ("nonfinite_obs_steps", ("env_runners", NONFINITE_OBS_STEPS)),
    ("skipped_updates", ("learners", "default_policy", "skipped_updates_lifetime")),
)
# The counters whose growth makes an iteration "bad" (values that keep coming, unlike a crash that is repaired).
BAD = ("nonfinite_obs_steps", "skipped_updates")


def _lookup(result: Mapping[str, Any], path: tuple[str, ...]) -> float:
    node: Any = result
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return 0.0
        node = node[key]
    try:
        value = float(node)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0


@dataclass
class FaultTracker:
    """Reads the fault counters from each iteration's result and applies the give-up rule."""

    max_bad_iterations: int
    env_runners: int = 0
    """Remote EnvRunners the run asked for; fewer healthy ones are shown while they are being replaced."""
    totals: dict[str, float] = field(default_factory=lambda: {name: 0.0 for name, _ in COUNTERS})
    bad_streak: int = 0
    healthy_runners: int | None = None

    def update(self, result: Mapping[str, Any]) -> dict[str, float]:
        """Takes one iteration's result; returns this iteration's increments per counter.

        Raises:
            FaultLimitError: the `max_bad_iterations`-th bad iteration in a row.
        """
        deltas = {}
        for name, path in COUNTERS:
            total = _lookup(result, path)
            deltas[name] = max(total - self.totals[name], 0.0)  # a restarted runner may restart its own count
            self.totals[name] = max(total, self.totals[name])
        healthy = result.get("fault_tolerance", {}).get("num_healthy_workers")
        self.healthy_runners = int(healthy) if isinstance(healthy, int | float) else None
        self.bad_streak = self.bad_streak + 1 if any(deltas[name] > 0 for name in BAD) else 0
        if self.bad_streak >= self.max_bad_iterations:
            raise FaultLimitError(
                f"{self.bad_streak} iterations in a row saw non-finite values (this iteration: "
                f"{deltas['nonfinite_obs_steps']:.0f} env steps with a NaN/inf observation, "
                f"{deltas['skipped_updates']:.0f} updates skipped for a NaN/inf loss); stopping. Check the env's "
                "observations and the learning rate; the last checkpoint is intact and `--resume` continues from "
                "it (faults.max_bad_iterations sets the limit)"
            )
        return deltas

    def summary(self) -> str:
        """' | faults: 0/2 runners up, 2 env errors, 1 runner restart' when anything happened so far, else ''."""
        labels = {
            "env_errors": "env error",
            "env_runner_restarts": "runner restart",
            "nonfinite_obs_steps": "non-finite obs",
            "skipped_updates": "skipped update",
        }
        parts = []
        if self.healthy_runners is not None and self.healthy_runners < self.env_runners:
            parts.append(f"{self.healthy_runners}/{self.env_runners} runners up")
        for name, label in labels.items():
            count = int(self.totals[name])
            if count:
                plural = "s" if count != 1 and not label.endswith("obs") else ""
                parts.append(f"{count} {label}{plural}")
        return f" | faults: {', '.join(parts)}" if parts else ""


def check_resources(config: ExperimentConfig, available: Mapping[str, float], cuda_in_driver: bool) -> None:
    """Refuses a config that the cluster cannot place, naming the resource, before any actor is started.

    Args:
        config: the experiment.
        available: the cluster's total resources (`ray.cluster_resources()`).
        cuda_in_driver: whether this process sees a CUDA device (the driver's own Learner when num_learners=0).
    """
    res = config.resources
    if res.num_learners == 0 and res.num_gpus_per_learner > 0 and not cuda_in_driver:
        raise ConfigError(
            f"resources.num_gpus_per_learner={res.num_gpus_per_learner} with resources.num_learners=0 puts the "
            "learner in this process, which sees no CUDA device; expected num_gpus_per_learner=0 here, or "
            "num_learners >= 1 on a cluster with GPU nodes"
        )
    for name, amount in res.demand().items():
        if name == "GPU" and res.num_learners == 0:
            continue  # the driver's own GPU, checked above: Ray does not reserve it
        have = float(available.get(name, 0.0))
        if amount > have + 1e-9:
            what = {"CPU": "CPUs", "GPU": "GPUs"}.get(name, f"units of the custom resource '{name}'")
            raise ConfigError(
                f"the resources section asks for {amount:g} {what} (EnvRunners and Learners together) but the Ray "
                f"cluster has {have:g}; expected at most {have:g}: lower resources.num_env_runners / num_learners / "
                "their per-actor amounts, or add nodes"
            )
