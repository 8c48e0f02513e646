"""metrics.csv (agents/metrics.py): the rows the driver writes are read back as written, a resume keeps exactly the
rows up to the checkpoint it continues from, and a file that is not ours is refused by name."""

from __future__ import annotations

import csv
import math

import pytest

from agents.metrics import COLUMNS, METRICS, MetricsWriter, Row, read_metrics


def _rows(n: int) -> list[Row]:
    return [
        Row(i, 400 * i, 1.5 * i, -10.0 + i if i != 2 else math.nan, 25.0, None if i % 2 else 0.25 * i)
        for i in range(1, n + 1)
    ]


def test_rows_are_read_back_as_written(tmp_path):
    writer = MetricsWriter(tmp_path, keep_until=0)
    for row in _rows(3):
        writer.write(row)
    writer.close()
    with open(tmp_path / METRICS, newline="") as f:  # what any CSV reader sees
        plain = list(csv.DictReader(f))
    assert [r["env_steps"] for r in plain] == ["400", "800", "1200"]
    assert plain[1]["return_mean"] == "" and plain[0]["win_rate"] == "" and plain[1]["win_rate"] == "0.5"
    back = read_metrics(tmp_path / METRICS)
    assert [(r.iteration, r.env_steps, r.win_rate) for r in back] == [(1, 400, None), (2, 800, 0.5), (3, 1200, None)]
    assert back[0].return_mean == -9.0 and math.isnan(back[1].return_mean)


def test_a_resume_keeps_the_rows_up_to_its_checkpoint(tmp_path):
    writer = MetricsWriter(tmp_path, keep_until=0)
    for row in _rows(3):
        writer.write(row)
    writer.close()
    writer = MetricsWriter(tmp_path, keep_until=800)  # resumed from the checkpoint at 800 env steps
    writer.write(Row(3, 1200, 0.5, 7.0, 25.0, None))
    writer.close()
    steps = [r.env_steps for r in read_metrics(tmp_path / METRICS)]
    assert steps == [400, 800, 1200] and read_metrics(tmp_path / METRICS)[-1].return_mean == 7.0
    MetricsWriter(tmp_path, keep_until=0).close()  # a fresh start in the same directory: no rows
    assert read_metrics(tmp_path / METRICS) == []


def test_a_file_that_is_not_a_metrics_csv_is_refused_by_name(tmp_path):
    path = tmp_path / METRICS
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"metrics.csv' has header \['a', 'b'\]; expected iteration,env_steps"):
        read_metrics(path)
    path.write_text(",".join(COLUMNS) + "\n1,400,0.1,oops,25,\n")
    with pytest.raises(ValueError, match="line 2: return_mean='oops' is not a number"):
        read_metrics(path)
