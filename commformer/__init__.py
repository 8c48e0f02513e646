"""commformer: a pure-PyTorch library of the CommFormer model (learned communication graphs for MARL).

Never imports ray: the RLlib glue lives in ``agents/``.
"""

from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.gates import TemporalGate, communication_cost, gate_adjacency
from commformer.graph import CommGraph, hard_topk, sample_gumbel, straight_through_topk
from commformer.layers import CommBlock, GraphAttention
from commformer.policy import CommFormerPolicy, PolicyOutput

__all__ = [
    "CommBlock",
    "CommFormerPolicy",
    "CommGraph",
    "GateConfig",
    "GraphAttention",
    "GraphConfig",
    "ModelConfig",
    "PolicyOutput",
    "TemporalGate",
    "communication_cost",
    "gate_adjacency",
    "hard_topk",
    "sample_gumbel",
    "straight_through_topk",
]
