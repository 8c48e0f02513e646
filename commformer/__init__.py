"""commformer: a pure-PyTorch library of the CommFormer model (learned communication graphs for MARL).

Never imports ray: the RLlib glue lives in ``agents/``.

The names below are imported on first use (PEP 562), not with the package: ``import commformer.config`` then loads
the configs alone, not torch and the model (tests/model/test_layering.py).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "CommBlock": "commformer.layers",
    "CommFormerPolicy": "commformer.policy",
    "CommGraph": "commformer.graph",
    "GateConfig": "commformer.config",
    "GraphAttention": "commformer.layers",
    "GraphConfig": "commformer.config",
    "ModelConfig": "commformer.config",
    "PolicyOutput": "commformer.policy",
    "TemporalGate": "commformer.gates",
    "communication_cost": "commformer.gates",
    "gate_adjacency": "commformer.gates",
    "hard_topk": "commformer.graph",
    "sample_gumbel": "commformer.graph",
    "straight_through_topk": "commformer.graph",
}
"""Each public name and the module that defines it."""

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'commformer' has no attribute {name!r}; expected one of {__all__}")
    return getattr(importlib.import_module(_HOMES[name]), name)
