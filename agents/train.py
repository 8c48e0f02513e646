"""The training driver: local embedded Ray (or a cluster), PPO iterations, progress, TensorBoard, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from agents import checkpoints as ckpt
from agents.config import ConfigError, ExperimentConfig, load_config, read_yaml, save_config
from agents.faults import FaultTracker, check_resources, wait_for_resources
from agents.rl_module import TeamDims, build_policy, team_dims
from agents.tensorboard import RunLogger
from commformer.export import save_policy
from commformer.policy import CommFormerPolicy

FAULTS_FILE = "faults.json"
"""In each checkpoint: the fault counters (agents/faults.py), so that a resumed run goes on counting."""


def limit_threads() -> None:
    """One intra-op thread in this process (workers get the same through their env vars)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    torch.set_num_threads(1)


def init_ray() -> bool:
    """Starts an embedded local Ray, or joins the cluster named by RAY_ADDRESS (e.g. under `ray submit`).

    Without RAY_ADDRESS the local Ray is always a new one (`address="local"`): a bare `ray.init()` would instead
    join any cluster that `ray start` left running on this machine, and die with it.

    Returns whether this call connected (and so should shut down); False if Ray was already up.
    """
    import ray

    from agents.build import worker_env_vars

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": worker_env_vars()}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(
            address="local",
            include_dashboard=False,
            runtime_env=runtime_env,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    return True


@dataclass
class Progress:
    """One line per iteration: where the run is, how well it does, how fast it goes."""

    total_steps: int
    start_steps: int
    out: TextIO

    def __post_init__(self) -> None:
        self.t0 = time.monotonic()

    def line(self, iteration: int, env_steps: int, ret: float, fps: float, extra: str = "") -> str:
        elapsed = time.monotonic() - self.t0
        done = env_steps - self.start_steps
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = max(self.total_steps - env_steps, 0) / rate if rate > 0 else math.inf
        pct = 100.0 * env_steps / self.total_steps
        ret_text = "   n/a" if math.isnan(ret) else f"{ret:8.2f}"
        return (
            f"iter {iteration:4d} | steps {env_steps:>10,}/{self.total_steps:,} ({pct:5.1f}%) | return {ret_text} "
            f"| {fps:7,.0f} steps/s | ETA {_duration(eta)}{extra}"
        )

    def print(self, *args: Any, **kwargs: Any) -> None:
        print(self.line(*args, **kwargs), file=self.out, flush=True)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _get(result: dict[str, Any], *keys: str, default: float = math.nan) -> float:
    node: Any = result
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    try:
        return float(node)
    except (TypeError, ValueError):
        return default


def policy_from_weights(config: ExperimentConfig, weights: dict[str, Any], dims: TeamDims) -> CommFormerPolicy:
    """A driver-side copy of the learner's policy (for export and graph images), from RLlib module weights."""
    policy = build_policy(config.model, dims)
    prefix = "policy."
    state = {k[len(prefix) :]: torch.as_tensor(np.asarray(v)) for k, v in weights.items() if k.startswith(prefix)}
    policy.load_state_dict(state)
    return policy.eval()


def prepare_run(config_path: str | None, overrides: list[str], resume: str | None) -> tuple[ExperimentConfig, Path]:
    """Validates everything (config, env, model vs env) before Ray starts; returns the config and run dir."""
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / ckpt.CONFIG
        if not saved.is_file():
            raise ckpt.CheckpointError(f"cannot resume: '{saved}' does not exist; expected a run directory")
        ckpt.check_resumable(ckpt.latest_checkpoint(run_dir))  # fails early, naming what is missing
        # The saved config is the base; overrides (e.g. a longer stop.env_steps) apply on top.
        config = load_config(saved, overrides)
        if config_path is not None:
            raise ConfigError("give either a CONFIG file or --resume RUN_DIR, not both")
    else:
        config = load_config(config_path, overrides)
        assert config.run.name is not None
        run_dir = Path(config.run.output_dir) / config.run.name
        if (run_dir / ckpt.CHECKPOINTS).exists():
            raise ConfigError(
                f"run directory '{run_dir}' already has checkpoints; use --resume {run_dir} or another run.name"
            )
    from agents.build import probe_env

    probe_env(config)
    return config, run_dir


class _Run:
    """One training run's moving parts: the Algorithm, its run directory, TensorBoard and the console line."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, dims: TeamDims, algo: Any, out: TextIO) -> None:
        self.config, self.run_dir, self.dims, self.algo, self.out = config, run_dir, dims, algo, out
        self.faults = FaultTracker(config.faults.max_bad_iterations, config.resources.num_env_runners)

    def restore(self) -> int:
        """Restores the newest checkpoint; returns its env-step count."""
        latest = ckpt.latest_checkpoint(self.run_dir)
        try:
            self.algo.restore_from_path(str((latest / ckpt.ALGORITHM).resolve()))
        except Exception as err:  # RLlib raises many kinds on damaged files; name the checkpoint
            raise ckpt.CheckpointError(f"'{latest}' could not be restored ({type(err).__name__}: {err})") from err
        steps = ckpt.read_meta(latest)["env_steps"]
        if (latest / FAULTS_FILE).is_file():  # checkpoints of earlier versions have none: counting starts anew
            self.faults.load(json.loads((latest / FAULTS_FILE).read_text()))
        print(f"resumed from {latest} at {steps:,} env steps", file=self.out, flush=True)
        return steps

    def snapshot(self) -> CommFormerPolicy:
        """The learner's current policy, copied to this process."""
        from ray.rllib.core import DEFAULT_MODULE_ID

        assert self.algo.learner_group is not None
        weights = self.algo.learner_group.get_weights([DEFAULT_MODULE_ID])[DEFAULT_MODULE_ID]
        return policy_from_weights(self.config, weights, self.dims)

    def save(self, iteration: int, env_steps: int) -> Path:
        """A complete checkpoint (RLlib state + exported policy + config), written atomically."""

        def fill(tmp: Path) -> None:
            self.algo.save_to_path(str((tmp / ckpt.ALGORITHM).resolve()))
            metadata = {
                "env": read_yaml(self.run_dir / ckpt.CONFIG)["env"],
                "iteration": iteration,
                "env_steps": env_steps,
            }
            save_policy(self.snapshot(), tmp / ckpt.POLICY, dataclasses.asdict(self.dims), metadata)
            (tmp / FAULTS_FILE).write_text(json.dumps(self.faults.state()))
            shutil.copy(self.run_dir / ckpt.CONFIG, tmp / ckpt.CONFIG)

        return ckpt.write_checkpoint(self.run_dir, iteration, env_steps, fill, self.config.run.keep_checkpoints)

    def loop(self, start_steps: int) -> Path | None:
        """Iterates until stop.env_steps: logs, prints, checkpoints. Returns the last checkpoint written here."""
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

        run = self.config.run
        logger = RunLogger(self.run_dir)
        progress = Progress(total_steps=self.config.stop.env_steps, start_steps=start_steps, out=self.out)
        faults = self.faults
        env_steps, last, iteration = start_steps, None, self.algo.iteration
        start_iteration = iteration
        try:
            while env_steps < self.config.stop.env_steps:
                t0 = time.monotonic()
                result = self.algo.train()
                iteration, before = self.algo.iteration, env_steps
                env_steps = int(_get(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME))
                fps = (env_steps - before) / max(time.monotonic() - t0, 1e-9)
                logger.log_result(result, env_steps, fps)
                if iteration % run.graph_image_every == 0 or iteration == 1:
                    logger.log_graph(self.snapshot().trunk.graph, env_steps)
                ret = _get(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
                try:
                    faults.update(result)
                finally:  # the iteration that breaks the limit is still shown and logged
                    logger.log_faults(faults.totals, env_steps)
                    progress.print(iteration, env_steps, ret, fps, logger.summary(result) + faults.summary())
                if iteration % run.checkpoint_every == 0:
                    last = self.save(iteration, env_steps)
            if iteration != start_iteration and (last is None or ckpt.read_meta(last)["iteration"] != iteration):
                last = self.save(iteration, env_steps)  # always end on a checkpoint of the final iteration
        finally:
            logger.close()
        print(f"done: {env_steps:,} env steps; checkpoint {last}", file=self.out, flush=True)
        return last


def train(config: ExperimentConfig, run_dir: Path, resume: bool = False, out: TextIO | None = None) -> Path:
    """Trains until `stop.env_steps`; returns the newest checkpoint directory.

    Resuming a run that already reached stop.env_steps trains nothing and writes nothing.
    """
    limit_threads()
    from agents.build import build_ppo_config, probe_env

    spaces = probe_env(config)
    dims = team_dims(spaces.observation_space, spaces.action_space)
    out = out or sys.stdout  # looked up now: tests swap sys.stdout

    started_ray = init_ray()
    import ray

    algo = None
    try:
        if os.environ.get("RAY_ADDRESS"):  # a joined cluster may grow: ask its autoscaler and wait
            from ray.autoscaler.sdk import request_resources

            wait_for_resources(
                config,
                ray.cluster_resources,
                lambda bundles: request_resources(bundles=bundles),
                config.resources.wait_for_nodes_s,
                out,
            )
        check_resources(config, ray.cluster_resources(), torch.cuda.is_available())
        run_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves nothing behind
        save_config(config, run_dir / ckpt.CONFIG)
        # RLlib announces the new API stack on every build; the user chose nothing, so it is noise on the console.
        logging.getLogger("ray.rllib.algorithms.algorithm_config").setLevel(logging.ERROR)
        algo = build_ppo_config(config).build_algo()
        session = _Run(config, run_dir, dims, algo, out)
        start_steps = session.restore() if resume else 0
        last = session.loop(start_steps)
        return last if last is not None else ckpt.latest_checkpoint(run_dir)
    finally:
        if algo is not None:
            algo.stop()
        if started_ray:
            ray.shutdown()
