"""Layers of the policy: graph-masked attention over agents, Orchid over time, mixture-of-experts heads."""

from commformer.layers.attention import CommBlock, GraphAttention
from commformer.layers.moe import MoEConfig, MoEHead, MoEOutput
from commformer.layers.orchid import OrchidBlock, OrchidConfig

__all__ = ["CommBlock", "GraphAttention", "MoEConfig", "MoEHead", "MoEOutput", "OrchidBlock", "OrchidConfig"]
