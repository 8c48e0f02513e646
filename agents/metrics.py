"""`metrics.csv`: one row per training iteration in every run directory, the figures sweeps and reports read.

TensorBoard's event files hold the same returns, but reading them back needs TensorBoard's event reader, and a
run that was resumed holds purged steps the reader must know to drop. A small CSV written by the driver is read
with the standard library, by anyone (spreadsheets, pandas, other frameworks' tools), and is rewritten on resume
to exactly the rows up to the checkpoint the run continues from.

Columns (`COLUMNS`): the iteration, the env steps sampled so far, the seconds since this process started training,
the mean training episode return and length of the iteration (RLlib's `episode_return_mean`, over the episodes
that ended in it; empty when none did) and the win rate where the env has a win signal (empty otherwise).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS = "metrics.csv"
COLUMNS = ("iteration", "env_steps", "time_s", "return_mean", "episode_len_mean", "win_rate")


@dataclass(frozen=True)
class Row:
    """One iteration of a run."""

    iteration: int
    env_steps: int
    time_s: float
    return_mean: float
    """NaN when no episode ended in the iteration."""
    episode_len_mean: float
    win_rate: float | None
    """None where the env has no win signal."""


def _cell(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(float(value))


def _number(text: str, column: str, path: Path, line: int) -> float:
    if text == "":
        return math.nan
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"'{path}' line {line}: {column}={text!r} is not a number") from None


class MetricsWriter:
    """Appends one row per iteration to `run_dir/metrics.csv`, flushed at once (a killed run keeps its rows).

    `keep_until` is the env-step count of the checkpoint the run starts from: rows after it were trained by a
    process whose work is redone now, and are dropped (all rows when starting from scratch, 0).
    """

    def __init__(self, run_dir: Path, keep_until: int) -> None:
        self.path = run_dir / METRICS
        kept = [row for row in read_metrics(self.path) if row.env_steps <= keep_until] if self.path.is_file() else []
        tmp = self.path.with_name(f".{METRICS}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(COLUMNS)
            for row in kept:
                writer.writerow(_cells(row))
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115  # closed by close(), after the loop
        self._writer = csv.writer(self._file)

    def write(self, row: Row) -> None:
        self._writer.writerow(_cells(row))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _cells(row: Row) -> list[Any]:
    return [
        row.iteration,
        row.env_steps,
        f"{row.time_s:.3f}",
        _cell(row.return_mean),
        _cell(row.episode_len_mean),
        _cell(row.win_rate),
    ]


def read_metrics(path: Path) -> list[Row]:
    """The rows of a metrics.csv, in file order.

    Raises:
        ValueError: the file lacks the header `COLUMNS` or holds a cell that is not a number, naming the line.
    """
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != COLUMNS:
            raise ValueError(f"'{path}' has header {header}; expected {','.join(COLUMNS)} (a commformer metrics.csv)")
        rows = []
        for line, cells in enumerate(reader, start=2):
            if len(cells) != len(COLUMNS):
                raise ValueError(f"'{path}' line {line} has {len(cells)} cells; expected {len(COLUMNS)}")
            values = {column: _number(text, column, path, line) for column, text in zip(COLUMNS, cells, strict=True)}
            win = values["win_rate"]
            rows.append(
                Row(
                    iteration=int(values["iteration"]),
                    env_steps=int(values["env_steps"]),
                    time_s=values["time_s"],
                    return_mean=values["return_mean"],
                    episode_len_mean=values["episode_len_mean"],
                    win_rate=None if math.isnan(win) else win,
                )
            )
    return rows
