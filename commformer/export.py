"""Exported policies: weights in safetensors, everything else in JSON - a format that cannot execute code.

A policy directory holds `policy.safetensors` (the `CommFormerPolicy` state dict) and `policy.json`:
`{"format": "commformer-policy", "version": 2, "model": <ModelConfig>, "dims": {n_agents, obs_dim, n_actions,
state_dim[, history][, action_kind]}, "metadata": {...}, "weights_sha256": <hex>}`. `action_kind` is `discrete`
(n_actions actions per agent) or `continuous` (a Box action of n_actions entries per agent, a Gaussian head); files
without it are discrete. A reader that does not know the key would build a discrete policy, whose weights' shapes
differ from a continuous one's (the log-std), so it refuses such a file rather than misreading it. Loading it
rebuilds the policy without RLlib, Ray or pickle.

Loading checks before it builds: the description (a JSON object, at most `MAX_SPEC_BYTES`), the dims (integers
within `DIM_BOUNDS`), the name and shape of every tensor against the weights file's header (read without loading
a tensor; the described policy is built on the meta device, which allocates nothing), then the sha256. Only then is
the policy built, at the size the file holds, and its weights loaded (and refused if any is not finite). Every
failure is a `PolicyFileError` naming the file and what was expected.

`weights_sha256` is the sha256 of policy.safetensors, recorded when the policy is saved and compared when it is
loaded: a weights file damaged past its header (random bytes behind an intact header load fine and play NaN) is
refused. Files written before it have no such key and load unchecked. It guards against damage, not tampering.

Versions: 2 names the weights by the policy's parts (`encoder.`, `trunk.`, `policy_head.`, `value_head.`, `exits.`);
1, written before the policy was split into them, has the older names (`obs_embed.`, `blocks.`, ...), which the
policy renames as it loads them (`commformer.policy.current_name`), so both load.

The version changes only when a reader of the previous version would misread a file of the new one (a weight or
a field renamed or given another meaning); a key that such a reader can ignore safely is added without a change, and
readers ignore keys they do not know. So `weights_sha256` came without a new version: older builds load files that
have it (unchecked), and this build loads version-1 and version-2 files without it.

The model section carries the encoder (`encoder`, `history`, `orchid`), so a policy that reads a history window
reloads as one; whoever plays it builds the env with `history=policy.config.env_history` (agents/play.py). Files
written before the history encoders existed have no such keys and load as `encoder=mlp`. `dims.history`, when
present, is the window of the env the policy was trained on and must agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from commformer.config import ModelConfig
from commformer.policy import CommFormerPolicy, current_name
from commformer.typed import ConfigError, from_mapping, to_dict

FORMAT = "commformer-policy"
VERSION = 2
READABLE = (1, 2)
"""The versions this build loads."""
WEIGHTS = "policy.safetensors"
SPEC = "policy.json"
HASH_KEY = "weights_sha256"
"""The key of policy.json that holds the sha256 (hex) of policy.safetensors."""
MAX_SPEC_BYTES = 16 * 2**20
"""A larger policy.json is not one this code wrote (its metadata is a few fields)."""
DIM_BOUNDS = {"n_agents": 4096, "obs_dim": 2**20, "n_actions": 2**20, "state_dim": 2**20}
"""Upper bounds of the dims: far above any env here, low enough that nothing absurd is sized from them."""


class PolicyFileError(ValueError):
    """An exported policy is missing, incomplete or does not match its description."""


def save_policy(
    policy: CommFormerPolicy, directory: str | Path, dims: dict[str, Any], metadata: dict[str, Any]
) -> Path:
    """Writes the policy to `directory` (created), each file via a temporary name and an atomic rename; the
    description, written last, records the sha256 of the weights file it describes."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in policy.state_dict().items()}
    _atomic_write(directory / WEIGHTS, lambda tmp: save_file(tensors, tmp))
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "model": to_dict(policy.config),
        "dims": dims,
        "metadata": metadata,
        HASH_KEY: _sha256(directory / WEIGHTS),
    }
    _atomic_write(directory / SPEC, lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2)))
    return directory


def load_policy(directory: str | Path) -> tuple[CommFormerPolicy, dict[str, Any]]:
    """Rebuilds a policy saved by `save_policy`; returns it (in eval mode) with its metadata.

    Everything that can be checked without building the policy is checked first (the description, the dims'
    bounds, the shape of every tensor against the weights file's header, the weights' sha256), so that a damaged or
    foreign file is refused with a PolicyFileError naming it, and nothing is built at a size the file does not hold.
    """
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC, directory / WEIGHTS
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise PolicyFileError(f"'{path}' is missing; expected an exported policy ({SPEC} + {WEIGHTS})")
    spec = _read_spec(spec_path)
    try:
        config: ModelConfig = from_mapping(ModelConfig, spec.get("model"), "model")
        dims = _check_dims(spec.get("dims"), config)
        metadata = spec.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata is {_brief(metadata)}; expected a JSON object")
    except (ConfigError, RecursionError, TypeError, ValueError) as err:
        raise PolicyFileError(f"'{spec_path}' does not describe a valid policy: {err}") from err
    _check_shapes(config, dims, spec_path, weights_path)
    _check_hash(spec, spec_path, weights_path)
    policy = _build(config, dims)
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise PolicyFileError(f"'{weights_path}' is not a readable safetensors file ({err})") from err
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PolicyFileError(
                f"'{weights_path}' holds non-finite values in '{name}'; expected finite weights (the file is corrupt)"
            )
    missing, unexpected = policy.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise PolicyFileError(
            f"'{weights_path}' does not match '{spec_path}': missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return policy.eval(), dict(metadata or {})


def _read_spec(spec_path: Path) -> dict[str, Any]:
    """The parsed description, refused unless it is a small JSON object of this format and a readable version."""
    size = spec_path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise PolicyFileError(
            f"'{spec_path}' is {size} bytes; expected a policy description of at most {MAX_SPEC_BYTES} bytes"
        )
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PolicyFileError(f"'{spec_path}' is not valid JSON ({err})") from err
    except RecursionError as err:
        raise PolicyFileError(f"'{spec_path}' is nested too deeply to be a policy description") from err
    if not isinstance(spec, dict):
        raise PolicyFileError(
            f"'{spec_path}' holds a JSON {type(spec).__name__}; expected a {FORMAT} description (a JSON object)"
        )
    if spec.get("format") != FORMAT:
        raise PolicyFileError(f"'{spec_path}' is not a {FORMAT} description (format={_brief(spec.get('format'))})")
    version = spec.get("version")
    if isinstance(version, bool) or version not in READABLE:
        raise PolicyFileError(
            f"'{spec_path}' has version {_brief(version)}; this build reads versions {list(READABLE)}"
        )
    return spec


def _check_dims(dims: Any, config: ModelConfig) -> dict[str, Any]:
    """`dims` as integers within `DIM_BOUNDS` (state_dim may be null) and a history window that is the model's.

    Raises:
        ValueError: naming the entry and the range expected.
    """
    if not isinstance(dims, dict):
        raise ValueError(f"dims is {_brief(dims)}; expected an object with n_agents, obs_dim, n_actions, state_dim")
    checked: dict[str, Any] = {}
    for name, bound in DIM_BOUNDS.items():
        if name not in dims:
            if name == "state_dim":
                checked[name] = None
                continue
            raise ValueError(f"dims.{name} is missing; expected an integer in [1, {bound}]")
        value = dims[name]
        if value is None and name == "state_dim":
            checked[name] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= bound:
            raise ValueError(f"dims.{name}={_brief(value)}; expected an integer in [1, {bound}]")
        checked[name] = value
    kind = dims.get("action_kind", "discrete")
    if kind not in ("discrete", "continuous"):
        raise ValueError(f"dims.action_kind={_brief(kind)}; expected 'discrete' or 'continuous'")
    checked["action_kind"] = kind
    history = dims.get("history", config.env_history)
    if history != config.env_history:
        raise ValueError(
            f"dims.history={_brief(history)} but model.encoder={config.encoder!r} with "
            f"model.history={config.history} reads a window of {config.env_history}"
        )
    return checked


def _build(config: ModelConfig, dims: dict[str, Any]) -> CommFormerPolicy:
    """The policy these dims describe (on the default device; under `torch.device("meta")`, shapes only)."""
    n_agents, obs_dim, n_actions = dims["n_agents"], dims["obs_dim"], dims["n_actions"]
    assert n_agents is not None and obs_dim is not None and n_actions is not None  # _check_dims
    continuous = dims.get("action_kind", "discrete") == "continuous"
    return CommFormerPolicy(config, n_agents, obs_dim, n_actions, dims["state_dim"], continuous=continuous)


def _check_shapes(config: ModelConfig, dims: dict[str, Any], spec_path: Path, weights_path: Path) -> None:
    """Compares the name and shape of every tensor the described policy holds with the weights file's header,
    read without loading a tensor; the policy is built on the meta device, which allocates nothing."""
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise PolicyFileError(f"'{weights_path}' is not a readable safetensors file ({err})") from err
    if "graph.logits" in found:  # version 1 names, as the policy renames them when it loads them
        found = {current_name(name): shape for name, shape in found.items()}
    with torch.device("meta"):
        expected = {name: tuple(t.shape) for name, t in _build(config, dims).state_dict().items()}
    described = f"'{spec_path}' (dims {dims})"
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise PolicyFileError(
            f"'{weights_path}' does not match {described}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise PolicyFileError(
                f"'{weights_path}' does not match {described}: '{name}' has shape {list(found[name])} in the "
                f"file, expected {list(shape)}"
            )


def _check_hash(spec: dict[str, Any], spec_path: Path, weights_path: Path) -> None:
    """Compares the weights file with the sha256 its description records (files written before have none)."""
    if HASH_KEY not in spec:
        return
    recorded = spec[HASH_KEY]
    if not isinstance(recorded, str) or len(recorded) != 64 or any(c not in "0123456789abcdef" for c in recorded):
        raise PolicyFileError(f"'{spec_path}' has {HASH_KEY}={_brief(recorded)}; expected 64 lowercase hex digits")
    actual = _sha256(weights_path)
    if actual != recorded:
        raise PolicyFileError(
            f"'{weights_path}' has sha256 {actual}, but '{spec_path}' records {recorded}: the weights are corrupt "
            "or were replaced; expected the file saved with that description"
        )


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _brief(value: Any) -> str:
    """A repr short enough for a one-line error, whatever the file held."""
    return reprlib.repr(value)


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
