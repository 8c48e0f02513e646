"""Checkpoint directories without RLlib: atomic assembly, LATEST, pruning, and the errors that name the problem."""

from __future__ import annotations

import json

import pytest

from agents import checkpoints as ckpt


def _fill(tmp):
    (tmp / "payload.txt").write_text("state")


def test_write_checkpoint_assembles_prunes_and_points_latest(tmp_path):
    for it in range(1, 6):
        ckpt.write_checkpoint(tmp_path, it, it * 100, _fill, keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("iter_*")) == ["iter_000004", "iter_000005"]
    assert (root / "LATEST").read_text() == "iter_000005"
    assert ckpt.read_meta(root / "iter_000005") == {"iteration": 5, "env_steps": 500}
    assert not list(root.glob(".tmp_*")) and not list(root.glob(".LATEST*"))


def test_a_failing_fill_leaves_the_previous_checkpoint_and_no_debris(tmp_path):
    ckpt.write_checkpoint(tmp_path, 1, 100, _fill, keep=3)

    def broken(tmp):
        (tmp / "half.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.write_checkpoint(tmp_path, 2, 200, broken, keep=3)
    root = tmp_path / "checkpoints"
    assert ckpt.latest_checkpoint(tmp_path) == root / "iter_000001"
    assert not (root / "iter_000002").exists() and not list(root.glob(".tmp_*"))


def test_meta_errors_name_the_file(tmp_path):
    bad = tmp_path / "iter_000001"
    bad.mkdir()
    with pytest.raises(ckpt.CheckpointError, match=r"meta\.json' is missing"):
        ckpt.read_meta(bad)
    (bad / "meta.json").write_text(json.dumps({"iteration": 1}))
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.read_meta(bad)


def test_resolve_accepts_run_or_checkpoint_and_refuses_other_paths(tmp_path):
    ckpt.write_checkpoint(tmp_path, 3, 300, _fill, keep=3)
    (tmp_path / "config.yaml").write_text("{}")
    assert ckpt.resolve_checkpoint(tmp_path).name == "iter_000003"
    assert ckpt.resolve_checkpoint(tmp_path / "checkpoints" / "iter_000003").name == "iter_000003"
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ckpt.CheckpointError, match="neither a run directory"):
        ckpt.resolve_checkpoint(other)
