"""Run directories and crash-safe checkpoints.

Layout of a run:

    RUN_DIR/config.yaml                    the resolved experiment (what `--resume` and `evaluate` read back)
    RUN_DIR/events.out.tfevents.*          TensorBoard scalars and graph images
    RUN_DIR/checkpoints/iter_000010/       one checkpoint:
        algorithm/                         RLlib Algorithm state (for --resume; pickle, written by this tool)
        policy/policy.safetensors + .json  the policy alone, code-free (for evaluate / rollout)
        meta.json                          iteration, env steps, time - written last
    RUN_DIR/checkpoints/LATEST             name of the newest complete checkpoint

A checkpoint is assembled under a temporary name and renamed into place only when complete, and LATEST is
replaced atomically after that, so a kill at any moment leaves the previous checkpoint intact and LATEST
pointing at a complete one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"
META = "meta.json"
ALGORITHM = "algorithm"
POLICY = "policy"
CONFIG = "config.yaml"


class CheckpointError(ValueError):
    """A run directory or checkpoint is missing, incomplete or corrupt."""


def write_checkpoint(
    run_dir: Path,
    iteration: int,
    env_steps: int,
    fill: Callable[[Path], None],
    keep: int,
) -> Path:
    """Creates `checkpoints/iter_XXXXXX` atomically: `fill(tmp_dir)` writes the content, then meta, rename,
    LATEST; finally prunes all but the newest `keep` checkpoints."""
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"iter_{iteration:06d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp_{final.name}_"))
    try:
        fill(tmp)
        meta = {"iteration": iteration, "env_steps": env_steps, "time": time.time()}
        (tmp / META).write_text(json.dumps(meta))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _write_atomic(root / LATEST, final.name)
    _prune(root, keep)
    return final


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(root: Path, keep: int) -> None:
    complete = sorted(p for p in root.glob("iter_*") if (p / META).is_file())
    for old in complete[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp_iter_*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)


def read_meta(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / META
    if not path.is_file():
        raise CheckpointError(f"'{checkpoint}' is not a complete checkpoint: '{META}' is missing")
    try:
        meta = json.loads(path.read_text())
        return {"iteration": int(meta["iteration"]), "env_steps": int(meta["env_steps"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"'{path}' is corrupt ({err}); expected JSON with iteration and env_steps") from err


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of a run (via LATEST, falling back to a scan if LATEST is damaged)."""
    root = run_dir / CHECKPOINTS
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory '{run_dir}' does not exist")
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / META).is_file():
            return candidate
    complete = sorted(p for p in root.glob("iter_*") if (p / META).is_file())
    if not complete:
        raise CheckpointError(
            f"no complete checkpoint in '{root}'; expected '{CHECKPOINTS}/iter_XXXXXX/{META}' written by "
            "`commformer train`"
        )
    return complete[-1]


RESUMABLE = (f"{ALGORITHM}/rllib_checkpoint.json", f"{ALGORITHM}/algorithm_state.pkl", f"{ALGORITHM}/learner_group")


def check_resumable(checkpoint: Path) -> None:
    """Fails, naming the missing part, if `checkpoint` lacks what `--resume` needs (checked before Ray starts)."""
    read_meta(checkpoint)
    for part in RESUMABLE:
        if not (checkpoint / part).exists():
            raise CheckpointError(f"'{checkpoint}' cannot be resumed: '{part}' is missing")


def resolve_checkpoint(path: str | Path) -> Path:
    """Accepts a run directory or a checkpoint directory; returns a complete checkpoint directory."""
    path = Path(path)
    if (path / META).is_file():
        return path
    if (path / CHECKPOINTS).is_dir() or (path / CONFIG).is_file():
        return latest_checkpoint(path)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist; expected a run directory or a checkpoint directory")
    raise CheckpointError(
        f"'{path}' is neither a run directory (with {CONFIG} and {CHECKPOINTS}/) nor a checkpoint (with {META})"
    )
