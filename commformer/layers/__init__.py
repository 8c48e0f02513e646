"""Layers of the CommFormer model; ``reference.py`` holds naive versions used only by tests."""

from commformer.layers.attention import CommBlock, GraphAttention

__all__ = ["CommBlock", "GraphAttention"]
