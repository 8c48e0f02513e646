"""`commformer sweep`: seeds x a grid of config values, each combination a Ray Tune trial that is an ordinary run.

    commformer sweep CONFIG --seeds 0 1 2 [key=v1,v2 ...] [key=value ...] [--name NAME]

A `key=v1,v2` argument is a grid axis (its values split at commas; a value written as a YAML list or mapping,
`[..]` / `{..}`, is one value); `key=value` without a comma is an override every trial shares. The trials are the
product of the axes and the seeds. Each trial calls the project's own training driver (`agents.train.train`) in a
Tune trial, so it writes an ordinary run directory, `run.output_dir/NAME/TRIAL/`, with config.yaml, checkpoints,
TensorBoard files and metrics.csv, which `commformer evaluate`, `commformer train --resume` and `commformer report`
read like any other run. TRIAL is `key=value,...,seed=S`.

- **Where**: on the embedded local Ray, or on the cluster RAY_ADDRESS names. Each trial reserves what its config's
  resources section asks for, as RLlib itself computes it (`default_resource_request`: the trial's own process,
  its EnvRunners and Learners, as one placement group), so Tune runs as many trials at once as fit.
- **Resume**: NAME is fixed (default: the config file's stem plus `-sweep`), so re-running the same command finds
  the same trial directories. A trial whose checkpoint reached stop.env_steps is done and not started again; one
  with an earlier checkpoint continues from it (`train --resume`); the others start. A trial directory that holds a
  different experiment (another config under the same NAME) is refused, naming the key.
- **Before Ray starts**, every trial's config is loaded and checked (unknown keys, bad values), each distinct env
  and model is probed against each other, the output directory must be writable, each trial's resources must fit
  the local machine (embedded Ray), and checkpoints to continue must be this user's own.
- **While it runs**, a table of the trials (status, iteration, env steps, return, win rate) is printed every
  `PROGRESS_EVERY_S` seconds and when a trial ends; **at the end**, each trial's final return and win rate (the last
  iteration's, from its metrics.csv) and the mean and standard deviation over seeds per grid point, also written to
  `NAME/summary.json`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from agents import checkpoints as ckpt
from agents.config import (
    ConfigError,
    ExperimentConfig,
    check_run_name,
    experiment_from_mapping,
    load_config,
    parse_override,
    read_yaml,
    to_dict,
)
from agents.metrics import METRICS, read_metrics

MAX_TRIALS = 1000
"""More trials than this in one sweep is a typo in a grid (or a grid that belongs on a bigger cluster in parts)."""
PROGRESS_EVERY_S = 30.0
"""Seconds between two progress tables while trials run (a table is also printed whenever a trial ends)."""
OWNED_BY_SWEEP = ("run.seed", "run.name")
"""Keys the sweep sets per trial: `--seeds` gives the seeds, the trial's axes its name."""
MAY_DIFFER = ("stop", "resources", "faults", "run.checkpoint_every", "run.keep_checkpoints", "run.graph_image_every")
"""Settings a re-run may change for a trial it continues (what `train --resume` lets change): not the experiment."""


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[str, ...]
    """The values as written on the command line (each parsed as YAML when applied)."""


@dataclass(frozen=True)
class Trial:
    name: str
    point: tuple[tuple[str, str], ...]
    """(key, value as written) of each axis: the grid point this trial belongs to."""
    seed: int
    config: ExperimentConfig
    run_dir: Path
    status: str
    """'new', 'continue' (from its last checkpoint) or 'done' (reached stop.env_steps: not started)."""

    @property
    def point_name(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.point) or "(no grid)"


# --------------------------------------------------------------------------------------------------------------
# The spec, checked before Ray starts.


def parse_specs(specs: Sequence[str]) -> tuple[list[str], list[Axis]]:
    """Splits `key=value` arguments into shared overrides and grid axes (`key=v1,v2`).

    Raises:
        ConfigError: a malformed argument, a key given twice, an empty value in a list, a key the sweep sets itself.
    """
    fixed: list[str] = []
    axes: list[Axis] = []
    seen: set[str] = set()
    for text in specs:
        keys, _ = parse_override(text)  # the form key=value, the key dotted
        key = ".".join(keys)
        raw = text.partition("=")[2]
        if key in seen:
            raise ConfigError(f"sweep: '{key}' is given twice; expected each key once (a grid: {key}=v1,v2)")
        seen.add(key)
        if key in OWNED_BY_SWEEP:
            how = "--seeds S1 S2 ..." if key == "run.seed" else "the sweep names each trial after its values"
            raise ConfigError(f"sweep: '{text}' sets {key}, which the sweep sets per trial; expected {how}")
        stripped = raw.strip()
        if "," in raw and not stripped.startswith(("[", "{")):
            values = tuple(v.strip() for v in raw.split(","))
            if any(not v for v in values):
                raise ConfigError(f"sweep: '{text}' has an empty value in its list; expected key=v1,v2,...")
            if len(set(values)) != len(values):
                raise ConfigError(f"sweep: '{text}' repeats a value; expected each value once")
            for value in values:
                parse_override(f"{key}={value}")  # each value is valid YAML
            axes.append(Axis(key, values))
        else:
            fixed.append(text)
    return fixed, axes


def _trial_name(point: Sequence[tuple[str, str]], seed: int) -> str:
    """`key=value,...,seed=S`, one directory name; a hash of it when it would be too long or not a plain name."""
    name = ",".join([*(f"{k}={v}" for k, v in point), f"seed={seed}"])
    if len(name) > 120 or any(c in name for c in "/\\\0") or name.startswith("."):
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        name = f"trial-{digest},seed={seed}"
    return name


def plan(config_path: str, seeds: Sequence[int], specs: Sequence[str], name: str | None = None) -> list[Trial]:
    """Every trial of the sweep, its config checked and its status read from its run directory (nothing written).

    Raises:
        ConfigError / CheckpointError: anything wrong with the spec, a trial's config, its env, the output directory,
            this machine's resources, or a trial directory to continue.
    """
    from agents.build import env_config_dict, probe_env
    from agents.faults import check_resources
    from agents.train import _check_writable, local_resources

    if not seeds:
        raise ConfigError("sweep: no seeds; expected --seeds S1 [S2 ...]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"sweep: --seeds {' '.join(map(str, seeds))} repeats a seed; expected each seed once")
    if any(seed < 0 for seed in seeds):
        raise ConfigError(f"sweep: --seeds {' '.join(map(str, seeds))}; expected seeds >= 0")
    fixed, axes = parse_specs(specs)
    points = list(itertools.product(*[[(axis.key, v) for v in axis.values] for axis in axes]))
    if len(points) * len(seeds) > MAX_TRIALS:
        raise ConfigError(
            f"sweep: {len(points)} grid points x {len(seeds)} seeds = {len(points) * len(seeds)} trials; expected at "
            f"most {MAX_TRIALS} (MAX_TRIALS, agents/sweep.py)"
        )
    base = load_config(config_path, fixed)
    sweep_name = name or f"{Path(config_path).stem}-sweep"
    try:
        check_run_name(sweep_name)  # one directory name below run.output_dir, as a run's name is
    except ConfigError as err:
        raise ConfigError(f"sweep: --name {sweep_name!r}: {err}") from err
    sweep_dir = (Path(base.run.output_dir) / sweep_name).resolve()
    _check_writable(sweep_dir)
    trials: list[Trial] = []
    probed: set[str] = set()
    for point in points:
        for seed in seeds:
            trial_name = _trial_name(point, seed)
            overrides = [
                *fixed,
                *(f"{k}={v}" for k, v in point),
                f"run.seed={seed}",
                f"run.output_dir={sweep_dir}",
                f"run.name={trial_name}",
            ]
            try:
                config = load_config(config_path, overrides)
            except ConfigError as err:
                raise ConfigError(f"sweep: trial {trial_name}: {err}") from err
            key = json.dumps([env_config_dict(config), to_dict(config.model)], sort_keys=True)
            if key not in probed:
                probed.add(key)
                try:
                    probe_env(config)
                except ConfigError as err:
                    raise ConfigError(f"sweep: trial {trial_name}: {err}") from err
            if not os.environ.get("RAY_ADDRESS"):
                import torch

                check_resources(config, local_resources(), torch.cuda.is_available(), where="this machine")
            run_dir = sweep_dir / trial_name
            trials.append(Trial(trial_name, tuple(point), seed, config, run_dir, _status(config, run_dir)))
    return trials


def _status(config: ExperimentConfig, run_dir: Path) -> str:
    """'new', 'continue' or 'done' for the trial's run directory, after checking it holds this trial's experiment."""
    if not ckpt.has_complete_checkpoint(run_dir):
        return "new"
    saved = read_yaml(run_dir / ckpt.CONFIG)
    differ = _differences(saved, to_dict(config))
    if differ:
        key, old, new = differ[0]
        raise ConfigError(
            f"sweep: '{run_dir}' holds another experiment ({key}={old!r} there, {new!r} in this sweep); expected the "
            "same sweep command to continue it, or another --name"
        )
    latest = ckpt.latest_checkpoint(run_dir)
    if ckpt.read_meta(latest)["env_steps"] >= config.stop.env_steps:
        return "done"
    ckpt.check_resumable(latest)  # this user's own checkpoint, complete; else refused by name
    return "continue"


def _differences(saved: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(saved, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(saved) | set(new), key=str):
            path = f"{prefix}{key}"
            if path in MAY_DIFFER:
                continue
            found += _differences(saved.get(key), new.get(key), f"{path}.")
        return found
    return [] if saved == new else [(prefix.rstrip("."), saved, new)]


# --------------------------------------------------------------------------------------------------------------
# Running the trials on Tune.


def _trial_main(params: dict[str, Any]) -> None:
    """One Tune trial: the project's training driver on the trial's config and run directory, reporting each
    iteration to Tune. Its console lines go to the run directory's train.log."""
    from ray import tune

    from agents.train import train

    spec = params["trial"]
    os.chdir(spec["cwd"])  # Tune starts trials in a directory of its own; relative paths mean the user's
    config = experiment_from_mapping(spec["config"])
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "a") as log:
        train(config, run_dir, resume=spec["resume"], out=log, report=lambda row: tune.report(_tune_metrics(row)))


def _tune_metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {key: (math.nan if value is None else value) for key, value in row.items()}


def _bundles(config: ExperimentConfig) -> list[dict[str, float]]:
    """What one trial reserves, as RLlib's Algorithm computes it for its config: the trial's own process (the
    driver-side Learner), its EnvRunners and its Learners."""
    import logging

    from ray.tune import PlacementGroupFactory

    from agents.algorithm import CommFormerPPO
    from agents.build import build_ppo_config

    # RLlib announces the new API stack on every build; the user chose nothing, so it is noise on the console.
    logging.getLogger("ray.rllib.algorithms.algorithm_config").setLevel(logging.ERROR)
    ppo = build_ppo_config(config)
    factory = CommFormerPPO.default_resource_request(ppo)
    assert isinstance(factory, PlacementGroupFactory)  # always, on the new API stack
    return [dict(bundle) for bundle in factory.bundles]


class _Progress:
    """The progress table: a Tune callback that prints the trials' latest figures now and then, and at each end."""

    def __init__(self, trials: Sequence[Trial], every_s: float) -> None:
        from ray import tune

        progress = self

        class Callback(tune.Callback):  # defined here: ray.tune is imported only when a sweep runs
            def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
                progress.rows[trial.config["trial"]["name"]] = ("running", result)
                if time.monotonic() - progress.last >= progress.every_s:
                    progress.print()

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                progress.end(trial.config["trial"]["name"], "done")

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                progress.end(trial.config["trial"]["name"], "ERROR")

        self.callback = Callback()
        self.every_s = every_s
        self.rows: dict[str, tuple[str, dict[str, Any]]] = {
            t.name: ("done (earlier)" if t.status == "done" else "pending", {}) for t in trials
        }
        self.last = time.monotonic()

    def end(self, name: str, status: str) -> None:
        self.rows[name] = (status, self.rows.get(name, ("", {}))[1])
        self.print()

    def print(self) -> None:
        self.last = time.monotonic()
        width = max(len(name) for name in self.rows)
        lines = [f"  {'trial':<{width}}  {'status':<14} {'iter':>5} {'env steps':>11} {'return':>9} {'win':>6}"]
        for name, (status, result) in self.rows.items():
            lines.append(
                f"  {name:<{width}}  {status:<14} {_text(result.get('iteration'), 'd'):>5} "
                f"{_text(result.get('env_steps'), ',d'):>11} {_text(result.get('return_mean'), '.2f'):>9} "
                f"{_text(result.get('win_rate'), '.2f'):>6}"
            )
        # sys.stdout looked up now, not kept: Tune pickles its callbacks with the Tuner, and a console cannot be.
        print("\n".join(lines), file=sys.stdout, flush=True)


def _text(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(int(value) if spec.endswith("d") else float(value), spec)


def run(trials: Sequence[Trial], out: TextIO | None = None, every_s: float = PROGRESS_EVERY_S) -> dict[str, Any]:
    """Runs the trials that are not done as Tune trials, then prints and writes the summary; returns it.

    Raises:
        RuntimeError: naming the trials that failed (their run directories keep what they wrote; the same
            command continues them).
    """
    from agents.train import init_ray, limit_threads

    out = out or sys.stdout
    pending = [t for t in trials if t.status != "done"]
    sweep_dir = trials[0].run_dir.parent
    done = len(trials) - len(pending)
    print(
        f"sweep {sweep_dir}: {len(trials)} trials, {done} done earlier (skipped), "
        f"{sum(t.status == 'continue' for t in pending)} to continue, {sum(t.status == 'new' for t in pending)} new",
        file=out,
        flush=True,
    )
    failed: list[str] = []
    if pending:
        limit_threads()
        started = init_ray()
        try:
            failed = _fit(pending, trials, sweep_dir, every_s)
        finally:
            if started:
                import ray

                ray.shutdown()
    summary = summarize(trials)
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(summary, out)
    if failed:
        raise RuntimeError(
            f"{len(failed)} trial(s) failed: {', '.join(failed)}; their run directories under '{sweep_dir}' keep "
            "their checkpoints and train.log; run the same command again to continue them"
        )
    return summary


def _fit(pending: Sequence[Trial], trials: Sequence[Trial], sweep_dir: Path, every_s: float) -> list[str]:
    import logging

    from ray import tune

    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    specs = [
        {
            "name": t.name,
            "config": to_dict(t.config),
            "run_dir": str(t.run_dir),
            "resume": t.status == "continue",
            "cwd": os.path.abspath(os.curdir),
            "bundles": _bundles(t.config),
        }
        for t in pending
    ]
    progress = _Progress(trials, every_s)

    def resources(params: dict[str, Any]) -> Any:
        return tune.PlacementGroupFactory(params["trial"]["bundles"])

    tuner = tune.Tuner(
        tune.with_resources(_trial_main, resources),
        param_space={"trial": tune.grid_search(specs)},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=str(sweep_dir / ".tune"),
            verbose=0,
            callbacks=[progress.callback],
            failure_config=tune.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    results = [grid[i] for i in range(len(grid))]
    return [r.config["trial"]["name"] for r in results if r.error is not None and r.config is not None]


# --------------------------------------------------------------------------------------------------------------
# The summary.


def _final(run_dir: Path) -> dict[str, Any]:
    """The last iteration's return and win rate of a run (from its metrics.csv), and its env steps."""
    path = run_dir / METRICS
    if not path.is_file():
        return {"env_steps": None, "return": None, "win_rate": None}
    rows = read_metrics(path)
    returns = [r for r in rows if not math.isnan(r.return_mean)]
    return {
        "env_steps": rows[-1].env_steps if rows else None,
        "return": returns[-1].return_mean if returns else None,
        "win_rate": rows[-1].win_rate if rows else None,
    }


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    mean = sum(present) / len(present)
    var = sum((v - mean) ** 2 for v in present) / (len(present) - 1) if len(present) > 1 else 0.0
    return mean, math.sqrt(var)


def summarize(trials: Sequence[Trial]) -> dict[str, Any]:
    """Per trial its final figures; per grid point their mean and (sample) standard deviation over the seeds."""
    per_trial = [
        {"trial": t.name, "point": t.point_name, "seed": t.seed, "run_dir": str(t.run_dir), **_final(t.run_dir)}
        for t in trials
    ]
    points: dict[str, list[dict[str, Any]]] = {}
    for row in per_trial:
        points.setdefault(row["point"], []).append(row)
    per_point = []
    for point, rows in points.items():
        ret_mean, ret_std = _mean_std([r["return"] for r in rows])
        win_mean, win_std = _mean_std([r["win_rate"] for r in rows])
        per_point.append(
            {
                "point": point,
                "seeds": [r["seed"] for r in rows],
                "return_mean": ret_mean,
                "return_std": ret_std,
                "win_rate_mean": win_mean,
                "win_rate_std": win_std,
            }
        )
    return {"trials": per_trial, "points": per_point}


def print_summary(summary: dict[str, Any], out: TextIO) -> None:
    print("final return / win rate per trial (the last iteration's, from metrics.csv):", file=out)
    width = max(len(r["trial"]) for r in summary["trials"])
    for r in summary["trials"]:
        print(
            f"  {r['trial']:<{width}}  steps {_text(r['env_steps'], ',d'):>10}  return {_text(r['return'], '.3f'):>9}"
            f"  win {_text(r['win_rate'], '.3f'):>6}",
            file=out,
        )
    print("mean over seeds per grid point (+- sample standard deviation):", file=out)
    width = max(len(p["point"]) for p in summary["points"])
    for p in summary["points"]:
        win = (
            ""
            if p["win_rate_mean"] is None
            else f"  win {_text(p['win_rate_mean'], '.3f')} +- {_text(p['win_rate_std'], '.3f')}"
        )
        print(
            f"  {p['point']:<{width}}  {len(p['seeds'])} seeds  return {_text(p['return_mean'], '.3f')} +- "
            f"{_text(p['return_std'], '.3f')}{win}",
            file=out,
        )
    out.flush()


def main_sweep(config_path: str, seeds: Sequence[int], specs: Sequence[str], name: str | None) -> dict[str, Any]:
    """`commformer sweep`: plan (everything checked before Ray starts), then run."""
    trials = plan(config_path, seeds, specs, name)
    return run(trials)


__all__ = ["Axis", "Trial", "main_sweep", "parse_specs", "plan", "print_summary", "run", "summarize"]
