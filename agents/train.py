"""The training driver: local embedded Ray (or a cluster), PPO iterations, progress, TensorBoard, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from agents import checkpoints as ckpt
from agents.config import ConfigError, ExperimentConfig, load_config, parse_override, read_yaml, save_config
from agents.console import drop_stderr_lines
from agents.faults import FaultTracker, check_resources, wait_for_resources
from agents.metrics import MetricsWriter, Row
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


FIXED_ON_RESUME = ("env", "model", "run.output_dir", "run.name", "run.seed")
"""Settings a resume cannot change: the checkpoint's weights, env and directory are theirs (a longer
stop.env_steps, other resources or training settings are fine)."""


def prepare_run(
    config_path: str | None, overrides: list[str], resume: str | None, trust_checkpoint: bool = False
) -> tuple[ExperimentConfig, Path]:
    """Validates everything (config, env, model vs env, the output directory, this machine's resources) before
    Ray starts; returns the config and run dir. A resume also checks that the overrides leave FIXED_ON_RESUME alone
    and that the checkpoint is this user's own (or `trust_checkpoint`; agents/checkpoints.py)."""
    if resume is not None:
        if config_path is not None:
            raise ConfigError("give either a CONFIG file or --resume RUN_DIR, not both")
        run_dir = Path(resume)
        saved = run_dir / ckpt.CONFIG
        if not saved.is_file():
            raise ckpt.CheckpointError(f"cannot resume: '{saved}' does not exist; expected a run directory")
        latest = ckpt.latest_checkpoint(run_dir)
        untrusted = ckpt.check_resumable(latest, trust_checkpoint)  # fails early, naming what is missing
        # The saved config is the base; overrides (e.g. a longer stop.env_steps) apply on top.
        _check_resume_changes(read_yaml(saved), overrides)
        config = load_config(saved, overrides)
        if untrusted is not None:
            print(f"warning: resuming '{latest}' on --trust-checkpoint although {untrusted}", file=sys.stderr)
    else:
        config = load_config(config_path, overrides)
        assert config.run.name is not None
        run_dir = Path(config.run.output_dir) / config.run.name
        if ckpt.has_complete_checkpoint(run_dir):
            raise ConfigError(
                f"run directory '{run_dir}' already has checkpoints; use --resume {run_dir} or another run.name"
            )
        _check_writable(run_dir)
    from agents.build import probe_env

    probe_env(config)
    if not os.environ.get("RAY_ADDRESS"):  # the embedded Ray will have exactly this machine
        check_resources(config, local_resources(), torch.cuda.is_available(), where="this machine")
    return config, run_dir


def _check_resume_changes(saved: dict[str, Any], overrides: list[str]) -> None:
    """Refuses an override of a resume that the checkpoint cannot follow (FIXED_ON_RESUME), naming it; checked on
    the saved config as written, before the overrides are validated against each other."""
    for text in overrides:
        keys, value = parse_override(text)
        key = ".".join(keys)
        if not f"{key}.".startswith(tuple(f"{fixed}." for fixed in FIXED_ON_RESUME)):
            continue
        node: Any = saved
        for part in keys:
            node = node.get(part) if isinstance(node, dict) else None
        if value != node:
            raise ConfigError(
                f"{key}={value!r} differs from the run's {node!r}: a resume continues the checkpoint, whose "
                f"{', '.join(FIXED_ON_RESUME)} are fixed; start a new run to change them"
            )


def _check_writable(run_dir: Path) -> None:
    """Refuses a run directory that cannot be created or written (checked before Ray starts; creates nothing)."""
    ancestor = run_dir
    while not ancestor.exists():
        if ancestor.is_symlink():  # a dangling link
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"cannot write the run to '{run_dir}': '{ancestor}' is not a directory; check run.output_dir")
    try:  # a real write: permission bits do not tell for root, read-only mounts or full quotas
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".commformer-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(
            f"cannot write the run to '{run_dir}': '{ancestor}' is not writable ({err.strerror or err}); "
            "check run.output_dir"
        ) from err


def local_resources() -> dict[str, float]:
    """What an embedded local Ray would offer: the CPUs this process may run on and the CUDA devices it sees."""
    return {"CPU": float(len(os.sched_getaffinity(0))), "GPU": float(torch.cuda.device_count())}


Report = Callable[[dict[str, Any]], None]
"""Called after every iteration with that iteration's figures (`iteration`, `env_steps`, `return_mean`,
`win_rate`; NaN / None where there are none): how a sweep's Tune trial reports to Tune (agents/sweep.py)."""


class _Run:
    """One training run's moving parts: the Algorithm, its run directory, TensorBoard and the console line."""

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        dims: TeamDims,
        algo: Any,
        out: TextIO,
        report: Report | None = None,
    ) -> None:
        self.config, self.run_dir, self.dims, self.algo, self.out = config, run_dir, dims, algo, out
        self.report = report
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
            ckpt.sign_algorithm(tmp)
            metadata = {
                "env": read_yaml(self.run_dir / ckpt.CONFIG)["env"],
                "iteration": iteration,
                "env_steps": env_steps,
            }
            save_policy(self.snapshot(), tmp / ckpt.POLICY, dataclasses.asdict(self.dims), metadata)
            (tmp / FAULTS_FILE).write_text(json.dumps(self.faults.state()))
            shutil.copy(self.run_dir / ckpt.CONFIG, tmp / ckpt.CONFIG)

        try:
            return ckpt.write_checkpoint(self.run_dir, iteration, env_steps, fill, self.config.run.keep_checkpoints)
        except OSError as err:  # disk full, permissions changed under the run: the previous checkpoint stands
            try:
                previous = f"the last complete one, '{ckpt.latest_checkpoint(self.run_dir)}', is intact"
            except ckpt.CheckpointError:
                previous = "there is no earlier one"
            raise ckpt.CheckpointError(
                f"could not write the checkpoint of iteration {iteration} under '{self.run_dir}' "
                f"({err.strerror or err}); {previous}. Fix the cause and continue with --resume {self.run_dir}"
            ) from err

    def loop(self, start_steps: int) -> Path | None:
        """Iterates until stop.env_steps: logs, prints, checkpoints. Returns the last checkpoint written here."""
        from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN, NUM_ENV_STEPS_SAMPLED_LIFETIME

        run = self.config.run
        # Steps an earlier process logged after the checkpoint this run starts from (all of them on a fresh start
        # in a directory whose first run left no checkpoint) are redone now: TensorBoard drops them.
        logger = RunLogger(self.run_dir, purge_step=start_steps + 1 if start_steps else 0)
        metrics = MetricsWriter(self.run_dir, keep_until=start_steps)  # the same rows dropped as TensorBoard's
        progress = Progress(total_steps=self.config.stop.env_steps, start_steps=start_steps, out=self.out)
        faults = self.faults
        env_steps, last, iteration = start_steps, None, self.algo.iteration
        start_iteration = iteration
        try:
            while env_steps < self.config.stop.env_steps:
                t0 = time.monotonic()
                result = self.algo.train()
                iteration, before = self.algo.iteration, env_steps
                sampled = _get(result, ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)  # NaN: no runner sampled
                env_steps = before if math.isnan(sampled) else int(sampled)
                fps = (env_steps - before) / max(time.monotonic() - t0, 1e-9)
                logger.log_result(result, env_steps, fps)
                if iteration % run.graph_image_every == 0 or iteration == 1:
                    logger.log_graph(self.snapshot().trunk.graph, env_steps)
                ret = _get(result, ENV_RUNNER_RESULTS, EPISODE_RETURN_MEAN)
                win = _get(result, ENV_RUNNER_RESULTS, "episode_win_rate")
                row = Row(
                    iteration=iteration,
                    env_steps=env_steps,
                    time_s=time.monotonic() - progress.t0,
                    return_mean=ret,
                    episode_len_mean=_get(result, ENV_RUNNER_RESULTS, "episode_len_mean"),
                    win_rate=None if math.isnan(win) else win,
                )
                metrics.write(row)
                if self.report is not None:
                    self.report(dataclasses.asdict(row))
                try:
                    faults.update(result, sampled=env_steps > before)
                finally:  # the iteration that breaks the limit is still shown and logged
                    logger.log_faults(faults.totals, env_steps)
                    progress.print(iteration, env_steps, ret, fps, logger.summary(result) + faults.summary())
                if iteration % run.checkpoint_every == 0:
                    last = self.save(iteration, env_steps)
            if iteration != start_iteration and (last is None or ckpt.read_meta(last)["iteration"] != iteration):
                last = self.save(iteration, env_steps)  # always end on a checkpoint of the final iteration
        finally:
            logger.close()
            metrics.close()
        print(f"done: {env_steps:,} env steps; checkpoint {last}", file=self.out, flush=True)
        return last


def train(
    config: ExperimentConfig,
    run_dir: Path,
    resume: bool = False,
    out: TextIO | None = None,
    report: Report | None = None,
) -> Path:
    """Trains until `stop.env_steps`; returns the newest checkpoint directory.

    Resuming a run that already reached stop.env_steps trains nothing and writes nothing. Joins a Ray that is already
    up (a sweep's Tune trial), and then leaves it up; `report`, if given, gets each iteration's figures.
    """
    limit_threads()
    from agents.build import probe_env

    out = out or sys.stdout  # looked up now: tests swap sys.stdout
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        done = ckpt.read_meta(latest)["env_steps"]
        if done >= config.stop.env_steps:
            print(
                f"nothing to train: '{run_dir}' is at {done:,} env steps and stop.env_steps={config.stop.env_steps:,}; "
                f"pass stop.env_steps=N with N > {done:,} to train further",
                file=out,
                flush=True,
            )
            return latest
    spaces = probe_env(config)
    dims = team_dims(spaces.observation_space, spaces.action_space)

    started_ray = init_ray()
    try:
        with _stop_on_sigterm_in_main_thread():  # after ray.init, which installs its own handler
            return _train_with_ray(config, run_dir, dims, resume, out, report)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _train_with_ray(
    config: ExperimentConfig, run_dir: Path, dims: TeamDims, resume: bool, out: TextIO, report: Report | None
) -> Path:
    """The part of `train` that runs with Ray up: resources, the Algorithm, restore, the loop."""
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
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)  # only now: a refused run leaves nothing behind
            save_config(config, run_dir / ckpt.CONFIG)
        # RLlib announces the new API stack on every build; the user chose nothing, so it is noise on the console.
        logging.getLogger("ray.rllib.algorithms.algorithm_config").setLevel(logging.ERROR)
        from agents.build import build_ppo_config

        with drop_stderr_lines():  # creating the EnvRunners makes Ray's core print a harmless error-level line
            algo = build_ppo_config(config).build_algo()
        session = _Run(config, run_dir, dims, algo, out, report)
        start_steps = 0
        if resume:  # the run directory changes only once its checkpoint has been restored
            start_steps = session.restore()
            save_config(config, run_dir / ckpt.CONFIG)
        last = session.loop(start_steps)
        return last if last is not None else ckpt.latest_checkpoint(run_dir)
    finally:
        if algo is not None:
            algo.stop()


@contextmanager
def _stop_on_sigterm_in_main_thread() -> Iterator[bool]:
    """SIGTERM stops training as Ctrl-C does, while the block runs; yields whether the handler was installed.

    Python lets only the main thread install signal handlers (`signal.signal` raises ValueError elsewhere). A sweep's
    Tune trial runs `train` in a worker thread: there Tune owns the process and its signals, and nothing is
    installed. The previous handler is restored after the block.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        yield True
    finally:
        signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the trainer: it stops as on Ctrl-C (the last complete checkpoint stands)."""


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()
