"""TensorBoard output of a run: the training scalars and the learned communication graph as an image.

A plain `algo.train()` loop writes no event files (docs/DESIGN.md, "RLlib facts"), so the driver writes them itself with
torch's SummaryWriter. The x axis of every scalar is env steps, so runs of different batch sizes line up.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from commformer.graph import CommGraph

# (result path, TensorBoard tag): the scalars a user reads first.
SCALARS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("env_runners", "episode_return_mean"), "return/episode_return_mean"),
    (("env_runners", "episode_return_max"), "return/episode_return_max"),
    (("env_runners", "episode_return_min"), "return/episode_return_min"),
    (("env_runners", "episode_len_mean"), "return/episode_len_mean"),
    (("env_runners", "episode_win_rate"), "return/episode_win_rate"),  # envs with a win signal (SMAX, SMACv2)
    (("policy_lag",), "perf/policy_lag"),  # training.sample_ahead: updates between sampling and training a batch
)
# Per-module learner metrics written by CommFormerPPOLearner (under learners/default_policy/...).
LEARNER_KEYS = (
    "policy_loss",
    "vf_loss",
    "entropy",
    "approx_kl",
    "clip_fraction",
    "gate_clipped_fraction",
    "comm_cost",
    "aux_loss",
    "gate_open_rate",
    "gate_greedy_open_rate",
    "gate_prob_mean",
    "messages_per_step",
    "value_norm_mean",
    "value_norm_std",
    "graph_steps",
    "graph_hears_all",
    "gate_cost_weight",
)

COMM_KEYS = (
    "comm_cost",
    "gate_clipped_fraction",
    "gate_open_rate",
    "gate_greedy_open_rate",
    "gate_prob_mean",
    "messages_per_step",
    "graph_steps",
    "graph_hears_all",
    "gate_cost_weight",
)
"""The learner metrics TensorBoard shows under `comm/`; the others go under `loss/`. `gate_open_rate` is the rate of
the decisions the rollouts sampled, `gate_greedy_open_rate` that of the greedy decisions (evaluation's)."""

GATE_GIVEN_PREFIX = "gate_open_rate_"
"""EnvRunner metrics `gate_open_rate_if_<fact>` / `gate_open_rate_unless_<fact>` (agents/env_runner.py) go to
TensorBoard under `comm/`."""

PREFIXED_GROUPS = {"moe": "moe", "exit": "exit", "loss": "loss_terms"}
"""Learner metrics named `<group>_<name>` (MoE usage / losses / temperature; early-exit losses and depths; the
loss's named terms, whose sum is the loss, agents/learner.py `loss_terms`) go to TensorBoard as `<tag>/<name>`
with this tag per group."""


def heatmap(matrix: np.ndarray, cell: int | None = None) -> np.ndarray:
    """A (3, H, W) uint8 image of a matrix with values in [0, 1]: dark = 0, bright yellow = 1 (viridis-like).

    Cells are square blocks of `cell` pixels (default: about 192 pixels across, at least 4 per cell).
    """
    cell = cell or max(4, 192 // max(1, matrix.shape[0]))
    m = np.clip(np.nan_to_num(matrix.astype(np.float64)), 0.0, 1.0)
    # Three anchor colours of viridis, interpolated: readable without matplotlib.
    anchors = np.array([[68, 1, 84], [33, 145, 140], [253, 231, 37]], dtype=np.float64)
    pos = m * 2.0
    lo = np.floor(pos).clip(0, 1).astype(int)
    frac = (pos - lo)[..., None]
    rgb = anchors[lo] * (1.0 - frac) + anchors[lo + 1] * frac  # (N, N, 3)
    img = np.kron(rgb, np.ones((cell, cell, 1)))  # (N*cell, N*cell, 3)
    return img.astype(np.uint8).transpose(2, 0, 1)


MARGIN, BAR, BACKGROUND = 34, 14, (255, 255, 255)
"""Pixels left of and above the grid for the axis labels, the colour bar's width, the background colour."""


def labelled_heatmap(matrix: np.ndarray, value_name: str) -> np.ndarray:
    """`heatmap` of an (N, N) graph with its axes: agent indices along both (every agent up to N = 16, then every
    `tick_step(N)`-th, so labels never overlap), "receiver" down the left, "sender" along the top, and a colour bar
    from 0 to 1 named `value_name` on the right. Drawn with Pillow's built-in font (no matplotlib needed).

    Returns:
        (3, H, W) uint8, the grid's top-left pixel at (MARGIN, MARGIN).
    """
    from PIL import Image, ImageDraw, ImageFont

    grid = heatmap(matrix)
    n, size = matrix.shape[0], grid.shape[1]
    cell = size // max(1, n)
    font = ImageFont.load_default()
    width = MARGIN + size + 12 + BAR + 8 + _text_width(font, value_name, "1.0")
    canvas = Image.new("RGB", (width, MARGIN + size + 6), BACKGROUND)
    canvas.paste(Image.fromarray(grid.transpose(1, 2, 0)), (MARGIN, MARGIN))
    draw = ImageDraw.Draw(canvas)
    for i in range(0, n, tick_step(n)):
        centre = MARGIN + i * cell + cell // 2
        draw.text((MARGIN - 3, centre), str(i), fill=(0, 0, 0), font=font, anchor="rm")  # receivers, left
        draw.text((centre, MARGIN - 3), str(i), fill=(0, 0, 0), font=font, anchor="ms")  # senders, top
    draw.text((MARGIN + size // 2, 2), "sender", fill=(0, 0, 0), font=font, anchor="mt")
    label = Image.new("RGB", (size, 12), BACKGROUND)
    ImageDraw.Draw(label).text((size // 2, 0), "receiver", fill=(0, 0, 0), font=font, anchor="mt")
    canvas.paste(label.rotate(90, expand=True), (1, MARGIN))
    bar_x = MARGIN + size + 12
    column = heatmap(np.linspace(1.0, 0.0, size)[:, None], cell=1)  # (3, size, 1): 1 at the top
    canvas.paste(Image.fromarray(np.repeat(column, BAR, axis=2).transpose(1, 2, 0)), (bar_x, MARGIN))
    draw.text((bar_x + BAR + 3, MARGIN), "1", fill=(0, 0, 0), font=font, anchor="lt")
    draw.text((bar_x + BAR + 3, MARGIN + size), "0", fill=(0, 0, 0), font=font, anchor="lb")
    draw.text((bar_x, MARGIN - 3), value_name, fill=(0, 0, 0), font=font, anchor="ls")
    return np.asarray(canvas).transpose(2, 0, 1).copy()


def tick_step(n: int) -> int:
    """Label every agent up to 16, then every 2nd, 4th, 8th ... so that at most 16 labels share an axis."""
    step = 1
    while n > 16 * step:
        step *= 2
    return step


def _text_width(font: Any, *texts: str) -> int:
    return max(int(font.getbbox(text)[2]) for text in texts)


class RunLogger:
    def __init__(self, run_dir: Path, purge_step: int | None = None) -> None:
        """`purge_step`: on a resume, TensorBoard discards the events logged at this step and later by earlier
        processes (steps that a crash cut off before their checkpoint, and that the resumed run logs again)."""
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)

    def log_result(self, result: dict[str, Any], env_steps: int, fps: float) -> None:
        for path, tag in SCALARS:
            value = _lookup(result, path)
            if value is not None:
                self.writer.add_scalar(tag, value, env_steps)
        learner = _lookup_dict(result, ("learners", "default_policy"))
        for key in LEARNER_KEYS:
            value = _as_float(learner.get(key))
            if value is not None:
                group = "comm" if key in COMM_KEYS else "loss"
                self.writer.add_scalar(f"{group}/{key}", value, env_steps)
        for key, raw in learner.items():  # MoE, early-exit and loss-term metrics, in their own groups
            group = key.split("_", 1)[0]
            value = _as_float(raw) if group in PREFIXED_GROUPS else None
            if value is not None:
                self.writer.add_scalar(f"{PREFIXED_GROUPS[group]}/{key[len(group) + 1 :]}", value, env_steps)
        for key, raw in _lookup_dict(result, ("env_runners",)).items():  # the gate open rate given each env fact
            value = _as_float(raw) if key.startswith(GATE_GIVEN_PREFIX) else None
            if value is not None:
                self.writer.add_scalar(f"comm/{key}", value, env_steps)
        self.writer.add_scalar("perf/env_steps_per_s", fps, env_steps)
        self.writer.flush()

    def log_faults(self, totals: dict[str, float], env_steps: int) -> None:
        """Lifetime fault counters (agents/faults.py), one `faults/<name>` scalar each."""
        for name, value in totals.items():
            self.writer.add_scalar(f"faults/{name}", value, env_steps)
        self.writer.flush()

    def log_graph(self, graph: CommGraph, env_steps: int) -> None:
        """The hard graph (who listens to whom: row = receiver, column = sender) and the sender probabilities, as
        labelled images (`labelled_heatmap`)."""
        with torch.no_grad():
            adjacency, probs = graph.hard().cpu().numpy(), graph.probs().cpu().numpy()
        self.writer.add_image("graph/adjacency", labelled_heatmap(adjacency, "edge (1 = listens)"), env_steps)
        self.writer.add_image("graph/sender_probs", labelled_heatmap(probs, "P(sender kept)"), env_steps)
        self.writer.flush()

    def summary(self, result: dict[str, Any]) -> str:
        learner = _lookup_dict(result, ("learners", "default_policy"))
        gate, msgs = _as_float(learner.get("gate_open_rate")), _as_float(learner.get("messages_per_step"))
        parts = []
        win = _lookup(result, ("env_runners", "episode_win_rate"))
        if win is not None:
            parts.append(f"win {win:.2f}")
        if gate is not None:
            parts.append(f"gates {gate:.2f}")
            greedy = _as_float(learner.get("gate_greedy_open_rate"))
            if greedy is not None:
                parts.append(f"(greedy {greedy:.2f})")
        if msgs is not None:
            parts.append(f"msgs {msgs:.1f}")
        depth = _as_float(learner.get("exit_rollout_depth_mean"))
        if depth is not None:
            parts.append(f"exit depth {depth:.2f}")
        return (" | " + " ".join(parts)) if parts else ""

    def close(self) -> None:
        self.writer.close()


def _lookup_dict(result: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = result
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def _lookup(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    return _as_float(_lookup_dict(result, path[:-1]).get(path[-1]))


def _as_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
