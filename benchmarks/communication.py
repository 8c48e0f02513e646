"""What communication buys: CommFormer's learned sparse graph against dense, a fixed random graph and none.

    python -m benchmarks.communication run --task predator_prey --arm learned --seed 0
    python -m benchmarks.communication sweep --task predator_prey --seeds 0 1 2     # every arm x seed (Tune trials)
    python -m benchmarks.communication sweep --task predator_prey --arms learned --tag NAME key=value ...  # a probe
    python -m benchmarks.communication summarize [--task predator_prey]            # tables + PNG of the curves

Every arm trains the task's ready config (`TASKS`) through the normal training path with one change each, so
everything else (model size, PPO settings, the critic's input, env steps) is equal:

- ``learned``: the config as it is: the learned graph (k = round(0.4 N) senders per receiver) with temporal gates.
- ``learned_dec``: the same with CommFormer-dec's autoregressive decoder (``model.decoder=autoregressive``): each
  agent also reads, along its edges, the actions of the agents that chose before it.
- ``learned_nogates``: the same without gates (``model.gates.enabled=false``): every receiver always listens.
- ``dense``: every agent hears every other at every step (``model.graph.sparsity=1.0``, no gates): the MAT-like
  full-communication reference.
- ``random``: a fixed random graph with the learned arm's k (``model.graph.init=random``, never updated:
  ``training.graph_freeze_fraction=0``), no gates: what the graph search buys over any graph of that size.
- ``no_comm``: no communication (``model.communicate=false``).
- ``cost<c>`` (e.g. ``cost0.1``): the learned arm with ``model.gates.cost_weight=c``: a sweep of these draws the trade
  of success against messages per step (``summarize`` plots the greedy figures of every arm as that front).

A probe (``--tag NAME key=value ...``) trains the given arms with more config changes, under the arm name
``<arm>-<NAME>`` (e.g. ``learned_nogates-freeze25`` for ``--tag freeze25 training.graph_freeze_fraction=0.25``):
a question about one arm asked with everything else equal; ``summarize`` lists probes after the arms.

A task name with the suffix ``_nostate`` runs the same task with ``env.use_state=false``: the critic then reads only
what the agents' features and the graph carry (CommFormer's own critic), where a centralised critic on the global
state could mask what communication buys.

Each run writes one CSV row per iteration to docs/benchmarks/communication/<task>_<arm>_seed<k>.csv (env steps,
return, wall seconds, the training success rate (the share of won episodes among the last 100), mean episode
length, and the learner's gate open rates and messages per step), and at the end plays `--eval-episodes` episodes
greedily: success rate, return, episode length (steps to capture where the episode ends at success) and messages
per step, in <stem>_greedy.json. Messages per step count the edges used after gates and dead senders.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.learning import _at, start_run, train_to_csv

OUT = Path("docs/benchmarks/communication")
RUNS = Path("runs/communication")
ARMS: dict[str, tuple[str, ...]] = {
    "learned": (),
    "learned_dec": ("model.decoder=autoregressive",),  # CommFormer-dec: the same, with the autoregressive decoder
    "learned_nogates": ("model.gates.enabled=false",),
    # k = null: a task that sets k (capture_2p2c_4x4) must not keep it, as k overrides the sparsity.
    "dense": ("model.graph.sparsity=1.0", "model.graph.k=null", "model.gates.enabled=false"),
    "random": ("model.graph.init=random", "training.graph_freeze_fraction=0.0", "model.gates.enabled=false"),
    "no_comm": ("model.communicate=false",),
}
TASKS: dict[str, tuple[str, int]] = {
    "predator_prey": ("configs/predator_prey.yaml", 1_000_000),
    "predator_prey_vision0": ("configs/predator_prey.yaml", 1_000_000),
    "predator_prey_10x10": ("configs/predator_prey_10x10.yaml", 3_000_000),
    "predator_prey_20x20": ("configs/predator_prey_20x20.yaml", 5_000_000),
    "predator_capture_prey": ("configs/predator_capture_prey.yaml", 1_000_000),
    "capture_3x3": ("configs/predator_capture_prey.yaml", 150_000),
    "capture_2p2c_4x4": ("configs/predator_capture_prey.yaml", 1_000_000),
    "capture_1p3c_4x4": ("configs/predator_capture_prey.yaml", 1_000_000),
    "traffic_junction_easy": ("configs/traffic_junction_easy.yaml", 1_000_000),
    "traffic_junction_medium": ("configs/traffic_junction_medium.yaml", 3_000_000),
    "smax_1o_2r_vs_4r": ("configs/smax_1o_2r_vs_4r.yaml", 2_000_000),
    "smax_1o_2r_vs_4r_hold": ("configs/smax_1o_2r_vs_4r_hold.yaml", 2_000_000),
}
"""task -> (ready config, env steps per run)."""
TASK_OVERRIDES: dict[str, tuple[str, ...]] = {
    "predator_prey_vision0": ("env.options.vision=0",),
    # tests/learning/test_capture_learning.py's task: a seeing predator and a blind capture agent, 6 steps.
    "capture_3x3": (
        "env.options.n_predators=1",
        "env.options.n_capture=1",
        "env.options.dim=3",
        "env.options.max_steps=6",
        "resources.num_envs_per_env_runner=64",
    ),
    # Two of each, one sender per receiver: the graph decides whether a capture agent hears a predator.
    "capture_2p2c_4x4": (
        "env.options.n_predators=2",
        "env.options.n_capture=2",
        "env.options.dim=4",
        "env.options.max_steps=10",
        "model.graph.k=1",
    ),
    # One seeing predator, three blind capture agents, one sender each: a capture agent that hears neither the
    # predator nor, through another, what the predator saw, must find the prey blind. Here senders differ.
    "capture_1p3c_4x4": (
        "env.options.n_predators=1",
        "env.options.n_capture=3",
        "env.options.dim=4",
        "env.options.max_steps=10",
        "model.graph.k=1",
    ),
}
INFORMED: dict[str, tuple[int, ...]] = {
    "capture_3x3": (0,),
    "capture_2p2c_4x4": (0, 1),
    "capture_1p3c_4x4": (0,),
    "predator_capture_prey": (0, 1),
    "smax_1o_2r_vs_4r_hold": (0,),
}
"""task -> the agents that see (predators, agents 0..P-1; SMAX's scout, ally 0), where the others are blind: the graph
table counts the receivers that hear one of them."""
NOSTATE = "_nostate"
COST_ARM = "cost"
COLORS = {
    "learned": "tab:blue",
    "learned_dec": "tab:purple",
    "learned_nogates": "tab:cyan",
    "dense": "tab:green",
    "random": "tab:orange",
    "no_comm": "tab:red",
}
COST_COLORMAP = "Greys"
"""The ``cost<c>`` arms' colours: shades of this matplotlib colormap, darker for a higher cost."""
PROBE_COLOR = "tab:brown"
"""The probes' colour."""
PROBE_SEP = "-"
"""Between an arm and a probe's tag in an arm name (task and arm names never hold it)."""


def arm_overrides(arm: str) -> tuple[str, ...]:
    """The config changes of an arm: one of `ARMS`, or ``cost<c>`` for the learned arm at gate cost c."""
    if arm in ARMS:
        return ARMS[arm]
    if arm.startswith(COST_ARM):
        try:
            cost = float(arm.removeprefix(COST_ARM))
        except ValueError:
            cost = -1.0
        if cost >= 0.0:
            return (f"model.gates.cost_weight={cost:g}",)
    raise argparse.ArgumentTypeError(f"unknown arm {arm!r}; expected one of {', '.join(ARMS)} or {COST_ARM}<c>, c >= 0")


def _arm(arm: str) -> str:
    arm_overrides(arm)
    return arm


def _is_arm(name: str) -> bool:
    try:
        arm_overrides(name)
    except argparse.ArgumentTypeError:
        return False
    return True


def arm_name(arm: str, tag: str | None) -> str:
    """The name an arm's files and trials go by: the arm, or ``<arm>-<tag>`` for a probe."""
    if tag is None:
        return arm
    if not tag or PROBE_SEP in tag or "_" in tag or "/" in tag:
        raise SystemExit(f"--tag {tag!r}: expected a non-empty name without '{PROBE_SEP}', '_' or '/'")
    return f"{arm}{PROBE_SEP}{tag}"


def _arm_order(name: str) -> tuple[int, float, str]:
    """ARMS in their order, then the cost arms by cost, then the probes by name."""
    if name in ARMS:
        return (0, list(ARMS).index(name), name)
    if PROBE_SEP not in name:
        return (1, float(name.removeprefix(COST_ARM)), name)
    return (2, 0.0, name)


def _colors(arms: Sequence[str]) -> dict[str, Any]:
    """A colour per arm: `COLORS` for the arms, `COST_COLORMAP` shades by cost for the cost arms, `PROBE_COLOR`."""
    from matplotlib import colormaps

    costs = [a for a in arms if a not in COLORS and PROBE_SEP not in a]
    shades = colormaps[COST_COLORMAP]
    out: dict[str, Any] = {a: shades(0.35 + 0.6 * i / max(len(costs) - 1, 1)) for i, a in enumerate(costs)}
    return out | {a: COLORS.get(a, PROBE_COLOR) for a in arms if a not in out}


def task_arms(task: str, out: Path) -> list[str]:
    """The arm names (probes included) with a run of ``task`` in ``out``, in `_arm_order`: the part of each
    ``<task>_<arm>_seed<k>.csv`` between the task and the seed whose arm (before a probe's tag) is an arm; a longer
    task name that starts with this one (predator_prey_vision0 for predator_prey) never parses as an arm."""
    names = set()
    for path in out.glob(f"{task}_*_seed*.csv"):
        name = path.stem[len(task) + 1 : path.stem.rindex("_seed")]
        if _is_arm(name.partition(PROBE_SEP)[0]):
            names.add(name)
    return sorted(names, key=_arm_order)


def measured_tasks(out: Path) -> list[str]:
    """Every task with a run in ``out``, whichever arms it ran: the part of each ``<task>_<arm>_seed<k>.csv`` before
    the longest arm (probe tags included) that ends it."""
    tasks = set()
    for path in out.glob("*_seed*.csv"):
        head = path.stem[: path.stem.rindex("_seed")]
        cuts = [i for i, c in enumerate(head) if c == "_" and _is_arm(head[i + 1 :].partition(PROBE_SEP)[0])]
        if cuts:
            tasks.add(head[: cuts[0]])
    return sorted(tasks)


def _task(name: str) -> tuple[str, int, tuple[str, ...]]:
    """(config, env steps, overrides) of a task name, `_nostate` included."""
    base = name.removesuffix(NOSTATE)
    if base not in TASKS:
        raise SystemExit(f"unknown task {name!r}; expected one of {', '.join(TASKS)} (optionally + {NOSTATE!r})")
    config, steps = TASKS[base]
    extra = TASK_OVERRIDES.get(base, ())
    return config, steps, (*extra, "env.use_state=false") if name.endswith(NOSTATE) else extra


def run(
    task: str,
    arm: str,
    seed: int,
    env_steps: int | None,
    eval_episodes: int,
    out: Path,
    tag: str | None = None,
    extra: Sequence[str] = (),
) -> Path:
    """Trains one arm (with a probe's ``tag`` and ``extra`` overrides) on one task and writes its CSV and greedy
    evaluation."""
    config_path, default_steps, task_overrides = _task(task)
    steps = env_steps or default_steps
    start_run()
    from agents.build import build_ppo_config, env_config_dict, probe_env
    from agents.config import load_config
    from agents.env_runner import EPISODE_WIN_RATE
    from benchmarks.smax_learning import learner_policy

    stem = f"{task}_{arm_name(arm, tag)}_seed{seed}"
    overrides = [*task_overrides, *arm_overrides(arm), *extra, f"run.seed={seed}", f"stop.env_steps={steps}"]
    config = load_config(config_path, overrides)
    probe_env(config)
    algo = build_ppo_config(config).build_algo()

    def columns(result: dict[str, Any]) -> dict[str, float]:
        runners = result["env_runners"]
        return {
            "success": float(runners.get(EPISODE_WIN_RATE, float("nan"))),
            "episode_len": float(runners.get("episode_len_mean", float("nan"))),
        }

    def greedy(trained: Any) -> None:
        evaluate(
            learner_policy(trained, config),
            env_config_dict(config),
            config.env.use_state,
            eval_episodes,
            seed,
            out,
            stem,
        )

    out.mkdir(parents=True, exist_ok=True)
    return train_to_csv(algo, out / f"{stem}.csv", steps, stem, extra=columns, at_end=greedy)


SAMPLED_GATES = "sampled_gates"
"""The greedy JSON's entry for the evaluation with the gates' decisions drawn (`evaluate --sample-gates`), for a policy
with learned gates: its win rate, messages per step and gate open rate."""
SAMPLED = "sampled"
"""The greedy JSON's entry for the evaluation as the training rollouts act, actions and gates drawn (`evaluate
--sample`): its win rate, messages per step and gate open rate."""

TB_COLUMNS = {
    "gate_open_rate": "comm/gate_open_rate",
    "gate_greedy_open_rate": "comm/gate_greedy_open_rate",
    "messages_per_step": "comm/messages_per_step",
}
"""The learner's communication figures `run` writes per iteration, as a sweep trial's TensorBoard holds them."""


def sweep(
    task: str,
    arms: list[str],
    seeds: list[int],
    env_steps: int | None,
    eval_episodes: int,
    out: Path,
    runs: Path,
    tag: str | None = None,
    extra: Sequence[str] = (),
) -> None:
    """Every arm x seed of a task: per arm one `commformer sweep` over the seeds (agents/sweep.py: Tune trials, each
    an ordinary run directory under `runs`, continued where it stopped), then each trial without a greedy result
    written as `run` writes it: the CSV from the trial's metrics.csv and TensorBoard, the greedy evaluation from its
    exported policy."""
    from agents.sweep import parse_specs, plan
    from agents.sweep import run as run_trials

    if parse_specs(extra)[1]:  # a grid would give one probe name several runs per seed, and one set of files
        raise SystemExit(
            f"a probe's overrides take one value each, got a grid in {' '.join(extra)}; run one probe per value"
        )
    config_path, default_steps, task_overrides = _task(task)
    steps = env_steps or default_steps
    for arm in arms:
        name = arm_name(arm, tag)
        changes = _last_wins([*task_overrides, *arm_overrides(arm), *extra])  # a sweep takes each key once
        specs = [*changes, f"stop.env_steps={steps}", f"run.output_dir={runs}"]
        trials = plan(config_path, seeds, specs, f"communication-{task}-{name}")
        run_trials(trials)
        for trial in trials:
            stem = f"{task}_{name}_seed{trial.seed}"
            if not (out / f"{stem}_greedy.json").exists():
                write_trial(trial.config, trial.run_dir, stem, eval_episodes, trial.seed, out)


def _last_wins(overrides: Sequence[str]) -> list[str]:
    """``key=value`` overrides with each key once, at its first place, with its last value (as `load_config` applies
    them: the arm's change of a key the task sets wins)."""
    merged: dict[str, str] = {}
    for override in overrides:
        key, _, value = override.partition("=")
        merged[key] = value
    return [f"{key}={value}" for key, value in merged.items()]


def write_trial(config: Any, run_dir: Path, stem: str, eval_episodes: int, seed: int, out: Path) -> Path:
    """A trained run directory as `run`'s files: <stem>.csv per iteration and <stem>_greedy.json."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.checkpoints import POLICY, latest_checkpoint
    from agents.metrics import METRICS, read_metrics
    from commformer.export import load_policy

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    comm = {key: {e.step: e.value for e in events.Scalars(tag)} for key, tag in TB_COLUMNS.items() if tag in tags}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["env_steps", "return_per_agent", "wall_s", "success", "episode_len", *comm])
        for row in read_metrics(run_dir / METRICS):
            success = math.nan if row.win_rate is None else row.win_rate
            cells = [row.return_mean, row.time_s, success, row.episode_len_mean]
            cells += [values.get(row.env_steps, math.nan) for values in comm.values()]
            writer.writerow([row.env_steps, *(f"{v:.4f}" for v in cells)])
    policy, metadata = load_policy(latest_checkpoint(run_dir) / POLICY)
    evaluate(policy, metadata["env"], config.env.use_state, eval_episodes, seed, out, stem)
    return path


def evaluate(
    policy: Any, env_config: dict[str, Any], use_state: bool, episodes: int, seed: int, out: Path, stem: str
) -> None:
    """<stem>_greedy.json: `evaluate`'s summary of the trained policy over ``episodes`` greedy episodes (seeds from
    10,000 + seed), its final graph, the same episodes played as the training rollouts act (`evaluate --sample`,
    under `SAMPLED`), and with learned gates with greedy actions and the gates drawn (`evaluate --sample-gates`,
    under `SAMPLED_GATES`): where the greedy success falls short of training's, these say whether the actions' or
    the gates' argmax is why."""
    import torch

    from agents.play import greedy_actor, make_play_env, play, sampling_actor

    env = make_play_env(env_config, policy)
    gated = policy.trunk.learns_gates
    keys = ("win_rate", "messages_per_step", "gate_open_rate")
    try:
        summary = play(env, greedy_actor(policy, use_state), episodes, seed=10_000 + seed).summary()
        torch.manual_seed(10_000 + seed)
        drawn = play(env, sampling_actor(policy, use_state), episodes, seed=10_000 + seed).summary()
        summary[SAMPLED] = {k: drawn[k] for k in keys}
        if gated:
            torch.manual_seed(10_000 + seed)
            actor = greedy_actor(policy, use_state, sample_gates=True)
            drawn = play(env, actor, episodes, seed=10_000 + seed).summary()
            summary[SAMPLED_GATES] = {k: drawn[k] for k in keys}
    finally:
        env.close()
    summary.update(final_graph(policy))
    (out / f"{stem}_greedy.json").write_text(json.dumps(summary, indent=2))
    print(f"{stem} greedy: success {summary['win_rate']:.3f}, messages {summary['messages_per_step']:.2f}")
    for key, what in ((SAMPLED, "actions and gates drawn"), (SAMPLED_GATES, "gates drawn")):
        if key in summary:
            one = summary[key]
            print(f"{stem} {what}: success {one['win_rate']:.3f}, messages {one['messages_per_step']:.2f}")


def final_graph(policy: Any) -> dict[str, list[list[int]]]:
    """``{"graph": row i = receiver i's senders}``, the graph a trained policy acts with; empty without
    communication."""
    if not policy.config.communicate:
        return {}
    hard = policy.trunk.graph.hard()
    n = len(hard)
    return {"graph": [[j for j in range(n) if j != i and hard[i, j]] for i in range(n)]}


def _read(path: Path) -> dict[str, list[float]]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in rows[0]} if rows else {}


def summarize(tasks: list[str], out: Path, results: bool = True) -> str:
    """Per task: one row per arm (means over seeds) of the training success at 25/50/100% of the run, the greedy
    success, return, episode length and messages per step, and messages as a share of dense's; plus a PNG. The text
    goes to ``out/results.md`` too with ``results`` (which should then be every task)."""
    lines = []
    for task in tasks:
        runs: dict[str, list[tuple[dict[str, list[float]], dict[str, Any] | None]]] = {}
        for arm in task_arms(task, out):
            for path in sorted(out.glob(f"{task}_{arm}_seed*.csv")):
                curve = _read(path)
                greedy_path = path.with_name(f"{path.stem}_greedy.json")
                greedy = json.loads(greedy_path.read_text()) if greedy_path.exists() else None
                if curve:
                    runs.setdefault(arm, []).append((curve, greedy))
        if not runs:
            continue
        total = min(c["env_steps"][-1] for group in runs.values() for c, _ in group)  # every run got there
        marks = [int(total * f) // 10_000 * 10_000 for f in (0.25, 0.5, 1.0)]
        dense_msgs = _mean([g["messages_per_step"] for _, g in runs.get("dense", []) if g])
        lines += [
            f"### {task}",
            "",
            "| arm | seeds | success " + " | ".join(f"{m / 1e6:g}M" for m in marks) + " | greedy success | greedy "
            "return | greedy episode length | greedy messages / step | share of dense's messages |",
            "|---|---|" + "---|" * len(marks) + "---|---|---|---|---|",
        ]
        for arm, group in runs.items():
            at = [
                _mean([_at(_int(c["env_steps"]), c["success"], m, window=total // 20) for c, _ in group]) for m in marks
            ]
            done = [g for _, g in group if g]
            msgs = _mean([g["messages_per_step"] for g in done])
            share = "-" if msgs is None or not dense_msgs else f"{msgs / dense_msgs:.0%}"
            cells = " | ".join(_fmt(v) for v in at)
            lines.append(
                f"| {arm} | {len(group)} | {cells} | {_fmt(_mean([g['win_rate'] for g in done]))} | "
                f"{_fmt(_mean([g['return_mean'] for g in done]))} | "
                f"{_fmt(_mean([g['episode_len_mean'] for g in done]), 1)} "
                f"| {_fmt(msgs)} | {share} |"
            )
        lines += ["", *_gate_table(runs), *_drawn_table(runs), *_graph_table(task, runs), ""]
        _plot(task, runs, out / f"{task}_success.png")
        _plot_front(task, runs, out / f"{task}_front.png")
    text = "\n".join(lines)
    if results:
        (out / "results.md").write_text(text + "\n")
    return text


def _drawn_table(runs: dict[str, list[tuple[dict[str, list[float]], dict[str, Any] | None]]]) -> list[str]:
    """Per arm, over the seeds evaluated each way: the greedy success, the success with the gates' decisions drawn
    and greedy actions (`SAMPLED_GATES`, gated arms), and the success and messages per step acting as the training
    rollouts do (`SAMPLED`)."""
    lines = []
    for arm, group in runs.items():
        done = [g for _, g in group if g and SAMPLED in g]
        if done:
            greedy = _mean([g["win_rate"] for g in done])
            gates = _mean([g[SAMPLED_GATES]["win_rate"] for g in done if SAMPLED_GATES in g])
            sampled = _mean([g[SAMPLED]["win_rate"] for g in done])
            msgs = _mean([g[SAMPLED]["messages_per_step"] for g in done])
            lines.append(f"| {arm} | {len(done)} | {_fmt(greedy)} | {_fmt(gates)} | {_fmt(sampled)} | {_fmt(msgs)} |")
    if not lines:
        return []
    header = (
        "| arm | seeds | greedy success | greedy actions, gates drawn | actions and gates drawn | messages / step, "
        "drawn |"
    )
    return [header, "|---|---|---|---|---|---|", *lines, ""]


def _gate_table(runs: dict[str, list[tuple[dict[str, list[float]], dict[str, Any] | None]]]) -> list[str]:
    """When the greedy gates open, per arm with gates: their mean open rate, and for each fact the game reports
    (predator_prey: ``saw_prey``) the open rate on the agent steps where it holds and where it does not, pooled
    over the seeds' evaluation steps. A gate is the receiver's: open means the agent listens."""
    facts = sorted({f for group in runs.values() for _, g in group if g for f in g.get("gate_open_rate_given", {})})
    if not facts:
        return []
    header = "| arm | greedy gates open | " + " | ".join(f"open if {f} | open if not {f}" for f in facts) + " |"
    lines = [header, "|---|---|" + "---|---|" * len(facts)]
    for arm, group in runs.items():
        done = [g for _, g in group if g and "gate_open_rate_given" in g]
        if not done:
            continue
        cells = []
        for fact in facts:
            for held in ("true", "false"):
                pairs = [
                    (g["gate_open_rate_given"][fact][held], g["gate_open_rate_given"][fact][f"agent_steps_{held}"])
                    for g in done
                    if fact in g["gate_open_rate_given"]
                ]
                steps = sum(n for _, n in pairs)
                rate = sum(r * n for r, n in pairs if r is not None) / steps if steps else None
                cells.append(f"{_fmt(rate)} ({steps:,})")
        lines.append(f"| {arm} | {_fmt(_mean([g.get('gate_open_rate') for g in done]))} | {' | '.join(cells)} |")
    return lines


def _graph_table(task: str, runs: dict[str, list[tuple[dict[str, list[float]], dict[str, Any] | None]]]) -> list[str]:
    """The final graph of each seed, for the arms with a sparse graph: ``i<-j`` per receiver. On a task with agents
    that know what the others need (`INFORMED`), also how many of the other receivers hear one of them, directly or
    through a chain of senders."""
    informed = INFORMED.get(task.removesuffix(NOSTATE))
    rows = []
    for arm, group in runs.items():
        graphs = [g["graph"] for _, g in group if g and g.get("graph")]
        if not graphs or all(len(senders) == len(graph) - 1 for graph in graphs for senders in graph):
            continue  # dense (every receiver hears everyone): nothing to read
        cells = []
        for graph in graphs:
            text = " ".join(f"{i}<-{','.join(map(str, senders))}" for i, senders in enumerate(graph))
            if informed is not None:
                direct, reached = _hears_informed(graph, informed)
                others = len(graph) - len(informed)
                text += f" (direct {direct}/{others}, chain {reached}/{others})"
            cells.append(text)
        rows.append(f"| {arm} | {' ; '.join(cells)} |")
    if not rows:
        return []
    return ["", "| arm | final graph per seed (receiver<-senders) |", "|---|---|", *rows]


def _hears_informed(graph: list[list[int]], informed: Sequence[int]) -> tuple[int, int]:
    """Of the receivers outside ``informed``: how many hear an informed agent directly, and how many reach one along
    their senders (any number of hops: a receiver can follow a sender that heard one)."""
    reached = set(informed)
    changed = True
    while changed:  # fixed point: a receiver is reached once any of its senders is
        changed = False
        for i, senders in enumerate(graph):
            if i not in reached and reached.intersection(senders):
                reached.add(i)
                changed = True
    others = [i for i in range(len(graph)) if i not in informed]
    direct = sum(1 for i in others if set(informed).intersection(graph[i]))
    return direct, sum(1 for i in others if i in reached)


def _int(values: list[float]) -> list[int]:
    return [int(v) for v in values]


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.mean(kept) if kept else None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plot(task: str, runs: dict[str, list[tuple[dict[str, list[float]], Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    colors = _colors(list(runs))
    for arm, group in runs.items():
        style = {"color": colors[arm], "alpha": 0.8, "lw": 1.2}
        for i, (curve, _) in enumerate(group):
            axes[0].plot(curve["env_steps"], curve["success"], label=arm if i == 0 else None, **style)
            if "messages_per_step" in curve:
                axes[1].plot(curve["env_steps"], curve["messages_per_step"], **style)
    axes[0].set_ylabel("success rate (last 100 episodes)")
    axes[1].set_ylabel("messages per step (training, sampled gates)")
    for ax in axes:
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{task}: one line per seed")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_front(task: str, runs: dict[str, list[tuple[dict[str, list[float]], Any]]], path: Path) -> None:
    """Greedy success against greedy messages per step, one point per run, labelled by arm: the bandwidth trade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    colors = _colors(list(runs))
    for arm, group in runs.items():
        points = [(g["messages_per_step"], g["win_rate"]) for _, g in group if g and g["win_rate"] is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.scatter(xs, ys, color=colors[arm], label=arm, alpha=0.8)
    ax.set_xlabel("messages per step (greedy)")
    ax.set_ylabel("success rate (greedy)")
    ax.set_title(f"{task}: success vs bandwidth, one point per run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="train and evaluate one arm on one task")
    one.add_argument("--arm", type=_arm, required=True, help=f"one of {', '.join(ARMS)}, or {COST_ARM}<c>")
    one.add_argument("--seed", type=int, default=0)
    many = sub.add_parser(
        "sweep", help="every arm x seed of a task as Tune trials (runs with a greedy result are skipped)"
    )
    many.add_argument("--arms", nargs="+", type=_arm, default=list(ARMS))
    many.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    for p in (one, many):
        p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}, optionally with {NOSTATE!r}")
        p.add_argument("--env-steps", type=int, default=None, help="default: the task's")
        p.add_argument("--eval-episodes", type=int, default=200)
        p.add_argument("--out", type=Path, default=OUT)
        p.add_argument("--tag", default=None, help="a probe's name: the arms with the overrides, as <arm>-<tag>")
        p.add_argument("overrides", nargs="*", metavar="key=value", help="a probe's config changes (needs --tag)")
    many.add_argument("--runs", type=Path, default=RUNS, help="where the trials' run directories go")
    table = sub.add_parser("summarize", help="print and write the tables and the figures")
    table.add_argument("--task", nargs="*", default=None)
    table.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.command == "summarize":
        # results.md holds every task: a summary of some of them is printed (and their figures drawn) only.
        tasks = args.task or measured_tasks(args.out)
        print(summarize(tasks, args.out, results=not args.task))
        return 0
    if bool(args.overrides) != (args.tag is not None):
        parser.error("--tag and key=value overrides go together: a probe has a name and its config changes")
    if args.tag is not None:
        arm_name(args.arm if args.command == "run" else args.arms[0], args.tag)  # a bad tag fails before any work
    if args.command == "run":
        run(args.task, args.arm, args.seed, args.env_steps, args.eval_episodes, args.out, args.tag, args.overrides)
        return 0
    sweep(
        args.task,
        args.arms,
        args.seeds,
        args.env_steps,
        args.eval_episodes,
        args.out,
        args.runs,
        args.tag,
        args.overrides,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
