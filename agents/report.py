"""`commformer report RUNS... [--out DIR]`: results across seeds and tasks, with the statistics papers report.

A *run* is a run directory (`config.yaml` and `metrics.csv`, written by every `commformer train` and sweep trial);
a path that is not one is searched for run directories below it (a sweep directory, `runs/`). Runs are grouped:

- **task**: the env (`env.name`), plus its options where runs of the same env differ in them (`mpe_spread
  (n_agents=5)`);
- **config**: everything else that defines the experiment (model, training, stop, env reward settings), labelled
  by the keys in which the configs differ (`training.lr=0.001`); runs differing only in `run.*` (seed, name,
  checkpoint cadence), `resources.*` or `faults.*` are seeds of one config.

A run's **score** is its final training return: the last iteration's `return_mean` in metrics.csv (RLlib's mean
return of the episodes that ended in that iteration). All statistics are rliable's (`rliable.metrics`,
`rliable.library.get_interval_estimates`: stratified bootstrap, percentile intervals, `REPS` resamples, seeded):

- per config and task: mean and interquartile mean (IQM) over seeds, each with a 95% bootstrap CI;
- per config over all tasks (when there are two or more): IQM of the scores min-max normalised per task over
  every run of every config (returns of different tasks have different scales; marl-eval normalises the same way);
- per ordered pair of configs on their common tasks: probability of improvement P(X > Y) with its 95% CI.

rliable needs as many runs per task within one config; a config with unequal counts is cut to its smallest count
per task (the runs kept: the lowest seeds), and the report says so.

Outputs in DIR (default `report/`): `report.json` (every figure above), `curves_<task>.png` (return against env
steps per config: the mean over seeds and its 95% bootstrap band, runs interpolated onto common steps),
`marl_eval.json` (the raw data in marl-eval's documented format, below) and the table on the console.

marl-eval's raw-data format, from its README (id-marl-eval 0.0.4): `{env: {task: {algorithm: {run: {"step_<i>":
{"step_count": int, "<metric>": [values]}, ..., "absolute_metrics": {"<metric>": [values]}}}}}}`. We write env =
`env.name`, task = the task's option label (`default` where runs do not differ in options), algorithm = the config
label (marl-eval forbids commas in algorithm names, so keys are joined by spaces), run = `seed_<S>`, one step per
iteration with `return` (and `win_rate` where the env has one) as one-element lists (an iteration's mean, not
per-episode values), and as `absolute_metrics` the final score. marl-eval's absolute metric is the best policy
evaluated over 10x the episodes; we have training returns only, so it is the last iteration's figure.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from agents import checkpoints as ckpt
from agents.config import ConfigError, read_yaml
from agents.metrics import METRICS, Row, read_metrics

REPS = 10_000
"""Bootstrap resamples per interval (rliable's default is 50,000; 10,000 keeps a report of many runs quick)."""
SEED = 0
"""Seed of the bootstrap, so that a report of the same runs gives the same intervals."""
CURVE_POINTS = 50
CURVE_REPS = 1000
"""Bootstrap resamples of a learning curve's band (one interval per plotted point)."""
EXCLUDED = ("run", "resources", "faults")
"""Config sections that do not make runs different experiments."""


@dataclass(frozen=True)
class Run:
    path: Path
    config: dict[str, Any]
    rows: list[Row]

    @property
    def seed(self) -> int:
        return int(self.config.get("run", {}).get("seed", 0))

    @property
    def score(self) -> float:
        returns = [r.return_mean for r in self.rows if not math.isnan(r.return_mean)]
        return returns[-1]


def find_runs(paths: Sequence[str]) -> list[Run]:
    """The run directories at or below `paths` (each path's own order, then sorted), read.

    Raises:
        ConfigError: a path that does not exist, holds no run, or a run without a single finished episode.
    """
    found: list[Path] = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise ConfigError(f"'{path}' does not exist; expected a run directory or a directory of runs")
        if (path / METRICS).is_file():
            candidates = [path]
        else:
            candidates = sorted(
                p.parent for p in path.rglob(METRICS) if not any(part.startswith(".") for part in p.parts)
            )
        if not candidates:
            raise ConfigError(
                f"'{path}' holds no run (no {METRICS} at or below it); expected run directories written by "
                "commformer train or sweep"
            )
        found += [c for c in candidates if c not in found]
    runs = []
    for path in found:
        if not (path / ckpt.CONFIG).is_file():
            raise ConfigError(f"'{path}' has {METRICS} but no {ckpt.CONFIG}; expected a complete run directory")
        try:
            rows = read_metrics(path / METRICS)
        except ValueError as err:
            raise ConfigError(str(err)) from err
        if not any(not math.isnan(r.return_mean) for r in rows):
            raise ConfigError(f"'{path}' has no iteration in which an episode ended; expected a run with a return")
        runs.append(Run(path, read_yaml(path / ckpt.CONFIG), rows))
    return runs


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): json.dumps(tree, sort_keys=True) if isinstance(tree, list) else tree}


def _differing(items: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted({k for item in items for k in item})
    return [k for k in keys if len({json.dumps(item.get(k), sort_keys=True) for item in items}) > 1]


def group(runs: Sequence[Run]) -> tuple[dict[str, str], dict[str, str], dict[str, tuple[str, str]]]:
    """Labels: run path -> task, run path -> config, task -> (marl-eval env, marl-eval task)."""
    by_env: dict[str, list[Run]] = {}
    for run in runs:
        by_env.setdefault(str(run.config["env"].get("name")), []).append(run)
    task_of: dict[str, str] = {}
    task_parts: dict[str, tuple[str, str]] = {}
    for env_name, members in by_env.items():
        options = [_flat(m.config["env"].get("options") or {}) for m in members]
        differ = _differing(options)
        for member, opts in zip(members, options, strict=True):
            suffix = " ".join(f"{k}={opts.get(k)}" for k in differ)
            task = f"{env_name} ({suffix})" if suffix else env_name
            task_of[str(member.path)] = task
            task_parts[task] = (env_name, suffix or "default")
    experiments = []
    for run in runs:
        flat = _flat({k: v for k, v in run.config.items() if k not in EXCLUDED})
        experiments.append({k: v for k, v in flat.items() if not k.startswith("env.options") and k != "env.name"})
    differ = _differing(experiments)
    config_of = {
        str(run.path): " ".join(f"{k}={e.get(k)}" for k in differ) or "commformer"
        for run, e in zip(runs, experiments, strict=True)
    }
    return task_of, config_of, task_parts


def _interval(scores: Any, func: Any) -> tuple[float, float, float]:
    """rliable's point estimate and 95% stratified-bootstrap CI of `func` (global numpy RNG seeded, then restored:
    rliable draws its resamples from it)."""
    from rliable import library as rly

    state = np.random.get_state()
    np.random.seed(SEED)
    try:
        point, interval = rly.get_interval_estimates({"x": scores}, func, reps=REPS)
    finally:
        np.random.set_state(state)
    return float(point["x"][0]), float(interval["x"][0][0]), float(interval["x"][1][0])


def _matrix(runs: Sequence[Run], tasks: Sequence[str], task_of: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """(runs x tasks) scores, cut to the smallest count per task (lowest seeds kept); notes on any cut."""
    columns, notes = [], []
    for task in tasks:
        members = sorted((r for r in runs if task_of[str(r.path)] == task), key=lambda r: (r.seed, str(r.path)))
        columns.append([r.score for r in members])
    least = min(len(c) for c in columns)
    for task, column in zip(tasks, columns, strict=True):
        if len(column) > least:
            notes.append(f"{task}: {len(column)} runs cut to {least} (the lowest seeds) to match the other tasks")
    return np.array([c[:least] for c in columns], dtype=np.float64).T, notes


def analyse(runs: Sequence[Run]) -> dict[str, Any]:
    """Every statistic of the report, as plain data."""
    from rliable import metrics

    task_of, config_of, task_parts = group(runs)
    tasks = sorted(set(task_of.values()))
    configs = sorted(set(config_of.values()))
    per_config_runs = {c: [r for r in runs if config_of[str(r.path)] == c] for c in configs}
    result: dict[str, Any] = {"tasks": tasks, "configs": configs, "per_task": [], "aggregate": [], "improvement": []}
    result["notes"] = []
    for config in configs:
        for task in tasks:
            members = [r for r in per_config_runs[config] if task_of[str(r.path)] == task]
            if not members:
                continue
            scores = np.array([[r.score] for r in members])
            mean = _interval(scores, lambda s: np.array([metrics.aggregate_mean(s)]))
            iqm = _interval(scores, lambda s: np.array([metrics.aggregate_iqm(s)]))
            result["per_task"].append(
                {
                    "config": config,
                    "task": task,
                    "runs": [str(r.path) for r in members],
                    "seeds": [r.seed for r in members],
                    "scores": [r.score for r in members],
                    "mean": mean[0],
                    "mean_ci95": [mean[1], mean[2]],
                    "iqm": iqm[0],
                    "iqm_ci95": [iqm[1], iqm[2]],
                }
            )
    if len(tasks) > 1:
        low = {t: min(r.score for r in runs if task_of[str(r.path)] == t) for t in tasks}
        high = {t: max(r.score for r in runs if task_of[str(r.path)] == t) for t in tasks}
        for config in configs:
            have = [t for t in tasks if any(task_of[str(r.path)] == t for r in per_config_runs[config])]
            if len(have) < len(tasks):
                result["notes"].append(f"{config}: no aggregate over tasks (it has runs on {len(have)} of them)")
                continue
            raw, notes = _matrix(per_config_runs[config], tasks, task_of)
            result["notes"] += [f"{config}: {n}" for n in notes]
            span = np.array([high[t] - low[t] for t in tasks])
            normalised = (raw - np.array([low[t] for t in tasks])) / np.where(span > 0, span, 1.0)
            iqm = _interval(normalised, lambda s: np.array([metrics.aggregate_iqm(s)]))
            result["aggregate"].append(
                {"config": config, "normalised_iqm": iqm[0], "normalised_iqm_ci95": [iqm[1], iqm[2]]}
            )
    for x in configs:
        for y in configs:
            if x == y:
                continue
            common = [
                t
                for t in tasks
                if any(task_of[str(r.path)] == t for r in per_config_runs[x])
                and any(task_of[str(r.path)] == t for r in per_config_runs[y])
            ]
            if not common:
                continue
            mx, _ = _matrix([r for r in per_config_runs[x] if task_of[str(r.path)] in common], common, task_of)
            my, _ = _matrix([r for r in per_config_runs[y] if task_of[str(r.path)] in common], common, task_of)
            poi = _interval([mx, my], lambda a, b: np.array([metrics.probability_of_improvement(a, b)]))
            result["improvement"].append(
                {"x": x, "y": y, "tasks": common, "probability": poi[0], "probability_ci95": [poi[1], poi[2]]}
            )
    result["marl_eval"] = marl_eval(runs, task_of, config_of, task_parts)
    return result


def marl_eval(
    runs: Sequence[Run], task_of: dict[str, str], config_of: dict[str, str], task_parts: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    """The runs in marl-eval's raw-data format (module docstring)."""
    data: dict[str, Any] = {}
    for run in runs:
        env_name, task_name = task_parts[task_of[str(run.path)]]
        algorithm = config_of[str(run.path)].replace(",", ";")  # marl-eval splits algorithm names at commas
        steps: dict[str, Any] = {}
        for i, row in enumerate(r for r in run.rows if not math.isnan(r.return_mean)):
            step: dict[str, Any] = {"step_count": row.env_steps, "return": [row.return_mean]}
            if row.win_rate is not None:
                step["win_rate"] = [row.win_rate]
            steps[f"step_{i}"] = step
        absolute: dict[str, Any] = {"return": [run.score]}
        wins = [r.win_rate for r in run.rows if r.win_rate is not None]
        if wins:
            absolute["win_rate"] = [wins[-1]]
        steps["absolute_metrics"] = absolute
        name = f"seed_{run.seed}"
        algo = data.setdefault(env_name, {}).setdefault(task_name, {}).setdefault(algorithm, {})
        while name in algo:  # two runs of one config with the same seed: keep both
            name += "_"
        algo[name] = steps
    return data


def plot_curves(runs: Sequence[Run], out_dir: Path) -> list[Path]:
    """One PNG per task: each config's mean return over seeds against env steps, with a 95% bootstrap band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task_of, config_of, _ = group(runs)
    written = []
    for task in sorted(set(task_of.values())):
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        for config in sorted(set(config_of.values())):
            members = [r for r in runs if task_of[str(r.path)] == task and config_of[str(r.path)] == config]
            curves = [
                (
                    np.array([r.env_steps for r in m.rows if not math.isnan(r.return_mean)], dtype=np.float64),
                    np.array([r.return_mean for r in m.rows if not math.isnan(r.return_mean)]),
                )
                for m in members
            ]
            start, end = max(c[0][0] for c in curves), min(c[0][-1] for c in curves)
            grid = np.array([end]) if end <= start else np.linspace(start, end, CURVE_POINTS)
            matrix = np.stack([np.interp(grid, steps, values) for steps, values in curves])  # (runs, points)
            from rliable import library as rly

            state = np.random.get_state()
            np.random.seed(SEED)
            try:
                point, band = rly.get_interval_estimates(
                    {"x": matrix[:, None, :]}, lambda s: s.mean(axis=0)[0], reps=CURVE_REPS
                )
            finally:
                np.random.set_state(state)
            (line,) = ax.plot(grid, point["x"], label=f"{config} ({len(members)} seeds)")
            ax.fill_between(grid, band["x"][0], band["x"][1], color=line.get_color(), alpha=0.2)
        ax.set_xlabel("env steps")
        ax.set_ylabel("training return (mean over seeds, 95% CI)")
        ax.set_title(task)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out_dir / f"curves_{re.sub(r'[^A-Za-z0-9_.=-]+', '_', task)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _fmt(value: float, ci: Sequence[float]) -> str:
    return f"{value:9.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def print_report(result: dict[str, Any], out: TextIO) -> None:
    print("per config and task (final training return over seeds; 95% bootstrap CIs):", file=out)
    for row in result["per_task"]:
        print(
            f"  {row['config']} | {row['task']} | {len(row['scores'])} seeds"
            f" | mean {_fmt(row['mean'], row['mean_ci95'])} | IQM {_fmt(row['iqm'], row['iqm_ci95'])}",
            file=out,
        )
    if result["aggregate"]:
        print("over all tasks (scores min-max normalised per task):", file=out)
        for row in result["aggregate"]:
            print(f"  {row['config']} | IQM {_fmt(row['normalised_iqm'], row['normalised_iqm_ci95'])}", file=out)
    if result["improvement"]:
        print("probability of improvement P(X > Y):", file=out)
        for row in result["improvement"]:
            print(f"  {row['x']}  >  {row['y']} | {_fmt(row['probability'], row['probability_ci95'])}", file=out)
    for note in result["notes"]:
        print(f"  note: {note}", file=out)
    out.flush()


def report(paths: Sequence[str], out_dir: str, out: TextIO | None = None) -> dict[str, Any]:
    """`commformer report`: reads the runs, computes, plots and writes everything; returns the analysis."""
    out = out or sys.stdout
    runs = find_runs(paths)
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out '{target}' is a file; expected a directory to write the report to")
    target.mkdir(parents=True, exist_ok=True)
    result = analyse(runs)
    curves = plot_curves(runs, target)
    (target / "marl_eval.json").write_text(json.dumps(result.pop("marl_eval"), indent=1))
    result["curves"] = [str(p) for p in curves]
    (target / "report.json").write_text(json.dumps(result, indent=2))
    print(f"{len(runs)} runs, {len(result['tasks'])} task(s), {len(result['configs'])} config(s)", file=out)
    print_report(result, out)
    print(f"wrote {target / 'report.json'}, {target / 'marl_eval.json'} and {len(curves)} curve PNG(s)", file=out)
    return result
