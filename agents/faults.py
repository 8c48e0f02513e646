"""Faults a run survives, how they are counted, and when a run gives up (docs/DESIGN.md, "Faults").

What survives what:
- A remote EnvRunner that dies is restarted by RLlib (`faults.restart_env_runners`); the count is RLlib's
  `fault_tolerance/num_remote_worker_restarts`.
- An env that raises in `reset()` / `step()` is rebuilt by RLlib (`faults.restart_failed_envs`, RLlib's
  `restart_failed_sub_environments`); the episodes in flight on that EnvRunner are dropped, and the count is
  RLlib's `env_runners/num_env_step_failures`.
- A non-finite observation, state or reward is set to 0 by `TeamEnv` and flagged in its info;
  `NonFiniteCounter` counts the flagged steps (`env_runners/nonfinite_obs_steps`).
- A non-finite loss or gradient makes the learner skip that update (`learners/default_policy/skipped_updates`).
- A run whose iterations keep seeing non-finite values stops with `FaultLimitError` (`FaultTracker`).

`check_resources` compares what the config reserves with what the Ray cluster has, so that a config asking for
a GPU (or a custom resource) that no node has fails at once with a message instead of waiting forever for an
actor that cannot be placed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.utils.annotations import override

from agents.config import ConfigError, ExperimentConfig

NONFINITE_OBS_STEPS = "nonfinite_obs_steps"
"""EnvRunner metric (lifetime sum): env steps whose observation, state or reward had a NaN / inf (zeroed by
TeamEnv)."""


class FaultLimitError(RuntimeError):
    """The run kept producing non-finite values, or sampled nothing, for `faults.max_bad_iterations` iterations in a
    row."""


RAY_WORKER_LOGS = "/tmp/ray/session_latest/logs/worker-*.err"
"""Where the local Ray keeps what its workers (the EnvRunners) wrote to stderr; runs do not forward it
(`log_to_driver=False`, agents/train.py)."""


class NonFiniteCounter(RLlibCallback):
    """Counts the env steps that `TeamEnv` flagged as carrying a non-finite observation, state or reward.

    Once per `sample()` call over the returned episodes, not per step: RLlib's per-step callback dispatch costs
    more than the count (docs/BENCHMARKS.md, "Figures behind code choices"). Every sampled step is in exactly one
    returned episode chunk; the chunks RLlib drops after an env error are not trained on and not counted.
    """

    @override(RLlibCallback)
    def on_sample_end(self, *, samples: Any, metrics_logger: Any = None, **kwargs: Any) -> None:
        flagged = 0
        for episode in samples:
            for info in episode.get_infos():
                if info.get("nonfinite_obs") or info.get("nonfinite_state") or info.get("nonfinite_reward"):
                    flagged += 1
        if flagged:
            metrics_logger.log_value(NONFINITE_OBS_STEPS, flagged, reduce="lifetime_sum")


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
    """Faults of the whole run so far (across resumes)."""
    last_raw: dict[str, float] = field(default_factory=lambda: {name: 0.0 for name, _ in COUNTERS})
    """The counters as RLlib last reported them. They are lifetime counts, but some start again from 0: RLlib's
    runner-restart count after a resume, a restarted EnvRunner's own counts."""
    bad_streak: int = 0
    idle_streak: int = 0
    """Iterations in a row in which no EnvRunner returned a sample."""
    healthy_runners: int | None = None

    def state(self) -> dict[str, dict[str, float]]:
        """What a checkpoint keeps, so that a resumed run neither forgets nor counts again its past faults."""
        return {"totals": dict(self.totals), "last_raw": dict(self.last_raw)}

    def load(self, state: Mapping[str, Mapping[str, float]]) -> None:
        for part in ("totals", "last_raw"):
            getattr(self, part).update({k: float(v) for k, v in state.get(part, {}).items() if k in self.totals})

    def update(self, result: Mapping[str, Any], sampled: bool = True) -> dict[str, float]:
        """Takes one iteration's result (`sampled`: whether it brought new env steps); returns this iteration's
        increments per counter.

        Raises:
            FaultLimitError: the `max_bad_iterations`-th bad iteration in a row, or the `max_bad_iterations`-th
                iteration in a row without a sample.
        """
        deltas = {}
        for name, path in COUNTERS:
            total = _lookup(result, path)  # RLlib's lifetime count
            last = self.last_raw[name]
            deltas[name] = total - last if total >= last else total  # below the last value: counting restarted
            self.last_raw[name] = total
            self.totals[name] += deltas[name]
        healthy = result.get("fault_tolerance", {}).get("num_healthy_workers")
        self.healthy_runners = int(healthy) if isinstance(healthy, int | float) else None
        self.bad_streak = self.bad_streak + 1 if any(deltas[name] > 0 for name in BAD) else 0
        self.idle_streak = 0 if sampled else self.idle_streak + 1
        if self.idle_streak >= self.max_bad_iterations:
            raise FaultLimitError(
                f"{self.idle_streak} iterations in a row sampled no env steps: every EnvRunner failed or was being "
                f"restarted (so far {self.totals['env_runner_restarts']:.0f} runner restarts, "
                f"{self.totals['env_errors']:.0f} env errors). An EnvRunner stops when its env raises in step() in "
                "most of its sample() calls, and a restarted one meets the same env; their errors are in Ray's worker "
                "logs "
                f"(the local Ray: {RAY_WORKER_LOGS}). The last checkpoint is intact and `--resume` continues from it "
                "(faults.max_bad_iterations sets the limit)"
            )
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


def _actors(config: ExperimentConfig) -> list[tuple[str, dict[str, float]]]:
    """(who, what it reserves) for every remote actor of the run, in Ray's resource names."""
    res = config.resources
    runner = {"CPU": res.num_cpus_per_env_runner, **res.custom_resources_per_env_runner}
    learner = {"CPU": res.num_cpus_per_learner, "GPU": res.num_gpus_per_learner}
    actors = [("EnvRunner", runner)] * res.num_env_runners + [("Learner", learner)] * res.num_learners
    return [(who, {k: v for k, v in bundle.items() if v > 0}) for who, bundle in actors]


def missing_resources(
    config: ExperimentConfig, available: Mapping[str, float], where: str = "the cluster"
) -> str | None:
    """What the run's actors reserve beyond `available` (a cluster's total resources), as a sentence, or None."""
    res = config.resources
    lacking = []
    for name, amount in res.demand().items():
        if name == "GPU" and res.num_learners == 0:
            continue  # the driver's own GPU: Ray does not reserve it (check_resources looks for CUDA instead)
        have = float(available.get(name, 0.0))
        if amount > have + 1e-9:
            users = sorted({who for who, bundle in _actors(config) if name in bundle})
            what = {"CPU": "CPUs", "GPU": "GPUs"}.get(name, f"units of the custom resource '{name}'")
            users_text = " and ".join(u + "s" for u in users)
            lacking.append(f"{amount:g} {what} (for the {users_text}) but {where} has {have:g}")
    if not lacking:
        return None
    grow = "add nodes" if where == "the cluster" else "join a cluster that has them (RAY_ADDRESS)"
    return (
        f"the resources section asks for {'; and '.join(lacking)}; lower resources.num_env_runners / num_learners "
        f"or their per-actor amounts, or {grow}"
    )


def check_resources(
    config: ExperimentConfig, available: Mapping[str, float], cuda_in_driver: bool, where: str = "the cluster"
) -> None:
    """Refuses a config whose actors need more of a resource than the cluster has in total, naming it.

    Only totals are compared: an actor bigger than any single node still waits in Ray (its size is the user's
    per-actor setting). On a cluster that can grow, call `wait_for_resources` first.

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
    reason = missing_resources(config, available, where)
    if reason is not None:
        raise ConfigError(reason)


def wait_for_resources(
    config: ExperimentConfig,
    read_available: Callable[[], Mapping[str, float]],
    request: Callable[[list[dict[str, float]]], None] | None,
    timeout_s: float,
    out: TextIO,
    poll_s: float = 5.0,
) -> None:
    """On a cluster that can grow: asks its autoscaler for the run's actors and waits until they fit.

    Returns at once when they already fit. Otherwise `request` (Ray's `autoscaler.sdk.request_resources`)
    receives one bundle per actor, so that an autoscaler starts the nodes (a cluster without one ignores it),
    and the cluster is polled until `timeout_s`. Then `check_resources` gives the error.
    """
    reason = missing_resources(config, read_available())
    if reason is None or timeout_s <= 0:
        return
    if request is not None:
        request([bundle for _, bundle in _actors(config)])
    print(f"waiting up to {timeout_s:g} s for the cluster to add nodes: {reason}", file=out, flush=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
        if missing_resources(config, read_available()) is None:
            return
