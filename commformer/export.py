"""Exported policies: weights in safetensors, everything else in JSON - a format that cannot execute code.

A policy directory holds `policy.safetensors` (the `CommFormerPolicy` state dict) and `policy.json`:
`{"format": "commformer-policy", "version": 2, "model": <ModelConfig>, "dims": {n_agents, obs_dim, n_actions,
state_dim[, history]}, "metadata": {...}}`. Loading it rebuilds the policy without RLlib, Ray or pickle.

Versions: 2 names the weights by the policy's parts (`encoder.`, `trunk.`, `policy_head.`, `value_head.`, `exits.`);
1, written before the policy was split into them, has the older names (`obs_embed.`, `blocks.`, ...), which the
policy renames as it loads them (`commformer.policy.current_name`), so both load.

The model section carries the encoder (`encoder`, `history`, `orchid`), so a policy that reads a history window
reloads as one; whoever plays it builds the env with `history=policy.config.env_history` (agents/play.py). Files
written before the history encoders existed have no such keys and load as `encoder=mlp`. `dims.history`, when
present, is the window of the env the policy was trained on and must agree.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from commformer.config import ModelConfig
from commformer.policy import CommFormerPolicy
from commformer.typed import ConfigError, from_mapping, to_dict

FORMAT = "commformer-policy"
VERSION = 2
READABLE = (1, 2)
"""The versions this build loads."""
WEIGHTS = "policy.safetensors"
SPEC = "policy.json"


class PolicyFileError(ValueError):
    """An exported policy is missing, incomplete or does not match its description."""


def save_policy(
    policy: CommFormerPolicy, directory: str | Path, dims: dict[str, int | None], metadata: dict[str, Any]
) -> Path:
    """Writes the policy to `directory` (created), each file via a temporary name and an atomic rename."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().cpu().contiguous() for name, t in policy.state_dict().items()}
    spec = {
        "format": FORMAT,
        "version": VERSION,
        "model": to_dict(policy.config),
        "dims": dims,
        "metadata": metadata,
    }
    _atomic_write(directory / WEIGHTS, lambda tmp: save_file(tensors, tmp))
    _atomic_write(directory / SPEC, lambda tmp: Path(tmp).write_text(json.dumps(spec, indent=2)))
    return directory


def load_policy(directory: str | Path) -> tuple[CommFormerPolicy, dict[str, Any]]:
    """Rebuilds a policy saved by `save_policy`; returns it (in eval mode) with its metadata."""
    directory = Path(directory)
    spec_path, weights_path = directory / SPEC, directory / WEIGHTS
    for path in (spec_path, weights_path):
        if not path.is_file():
            raise PolicyFileError(f"'{path}' is missing; expected an exported policy ({SPEC} + {WEIGHTS})")
    try:
        spec = json.loads(spec_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PolicyFileError(f"'{spec_path}' is not valid JSON ({err})") from err
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise PolicyFileError(f"'{spec_path}' is not a {FORMAT} description (format={spec.get('format')!r})")
    if spec.get("version") not in READABLE:
        raise PolicyFileError(
            f"'{spec_path}' has version {spec.get('version')!r}; this build reads versions {list(READABLE)}"
        )
    try:
        config: ModelConfig = from_mapping(ModelConfig, spec.get("model"), "model")
        dims = spec["dims"]
        policy = CommFormerPolicy(
            config,
            n_agents=int(dims["n_agents"]),
            obs_dim=int(dims["obs_dim"]),
            n_actions=int(dims["n_actions"]),
            state_dim=dims.get("state_dim"),
        )
        if int(dims.get("history", config.env_history)) != config.env_history:
            raise ValueError(
                f"dims.history={dims['history']} but model.encoder={config.encoder!r} with "
                f"model.history={config.history} reads a window of {config.env_history}"
            )
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise PolicyFileError(f"'{spec_path}' does not describe a valid policy: {err}") from err
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as err:
        raise PolicyFileError(f"'{weights_path}' is not a readable safetensors file ({err})") from err
    missing, unexpected = policy.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise PolicyFileError(
            f"'{weights_path}' does not match '{spec_path}': missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    return policy.eval(), dict(spec.get("metadata") or {})


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
