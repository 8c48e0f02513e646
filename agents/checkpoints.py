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

`algorithm/` is RLlib's state, partly pickle: resuming from it can run any code the files hold. So each checkpoint
also holds `algorithm.sha256.json`: the sha256 of every file under `algorithm/`, signed (HMAC-SHA256) with a key
that only this user on this machine can read (`key_path()`, created on first use with mode 0600). `--resume` checks
the signature and every hash before Ray starts (`algorithm_trust`): a checkpoint written elsewhere, by an older
version, or changed since, is refused unless the user says they trust it (`--trust-checkpoint`), and then the run
says so when it starts. The exported policy (`policy/`) holds no pickle and needs no such check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
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
MANIFEST = "algorithm.sha256.json"
KEY_ENV = "COMMFORMER_CHECKPOINT_KEY"
"""Environment variable naming the signing key's file (default: ~/.config/commformer/checkpoint.key)."""


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


def key_path() -> Path:
    """Where this user's checkpoint signing key lives: $COMMFORMER_CHECKPOINT_KEY, else under $XDG_CONFIG_HOME (or
    ~/.config)/commformer/."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV])
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config_home / "commformer" / "checkpoint.key"


def _signing_key(create: bool) -> bytes | None:
    """This user's key (32 random bytes), created readable by the owner only when `create`; None if absent."""
    path = key_path()
    if not path.is_file():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:  # mkstemp creates it with mode 0600
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # never replaces a key another process created meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_bytes()


def _file_hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file below `directory`, by path relative to it (sorted)."""
    hashes = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        hashes[path.relative_to(directory).as_posix()] = digest.hexdigest()
    return hashes


def _mac(key: bytes, hashes: dict[str, str]) -> str:
    return hmac.new(key, json.dumps(hashes, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def sign_algorithm(checkpoint: Path) -> None:
    """Writes MANIFEST for `checkpoint/algorithm/` (called while the checkpoint is assembled)."""
    key = _signing_key(create=True)
    assert key is not None
    hashes = _file_hashes(checkpoint / ALGORITHM)
    (checkpoint / MANIFEST).write_text(json.dumps({"files": hashes, "hmac": _mac(key, hashes)}, indent=1))


def algorithm_trust(checkpoint: Path) -> str | None:
    """None if `checkpoint/algorithm/` is exactly what this user's commformer wrote here; else why not, as a phrase."""
    path = checkpoint / MANIFEST
    if not path.is_file():
        return f"it has no '{MANIFEST}' (written by another tool or a commformer older than the signed checkpoints)"
    try:
        manifest = json.loads(path.read_text())
        hashes, mac = dict(manifest["files"]), str(manifest["hmac"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return f"its '{MANIFEST}' is damaged"
    key = _signing_key(create=False)
    if key is None or not hmac.compare_digest(mac, _mac(key, hashes)):
        return f"its '{MANIFEST}' was not signed with this user's key ({key_path()}): it was written elsewhere"
    found = _file_hashes(checkpoint / ALGORITHM)
    changed = sorted(name for name in set(hashes) | set(found) if hashes.get(name) != found.get(name))
    if changed:
        return f"'{ALGORITHM}/' changed since it was written ({', '.join(changed[:3])})"
    return None


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


def check_resumable(checkpoint: Path, trust: bool = False) -> str | None:
    """Fails, naming the missing part, if `checkpoint` lacks what `--resume` needs, or if its pickled state is not
    known to be this user's own (`algorithm_trust`) and `trust` is False (checked before Ray starts).

    Returns why the checkpoint is not known to be this user's when `trust` lets it through (None when it is), for
    the run to say at start.
    """
    read_meta(checkpoint)
    for part in RESUMABLE:
        if not (checkpoint / part).exists():
            raise CheckpointError(f"'{checkpoint}' cannot be resumed: '{part}' is missing")
    reason = algorithm_trust(checkpoint)
    if reason is not None and not trust:
        raise CheckpointError(
            f"'{checkpoint}' is not known to be yours: {reason}. Resuming unpickles its '{ALGORITHM}/' files, which "
            "can run any code; if you trust where it came from, resume with --trust-checkpoint"
        )
    return reason


def has_complete_checkpoint(run_dir: Path) -> bool:
    """Whether the run holds a checkpoint to resume from (an empty or half-written `checkpoints/` holds none)."""
    return any((p / META).is_file() for p in (run_dir / CHECKPOINTS).glob("iter_*"))


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
