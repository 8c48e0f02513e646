"""The graph heatmap written to TensorBoard: shape, colour scale, robustness."""

from __future__ import annotations

import numpy as np

from agents.tensorboard import heatmap


def test_heatmap_shape_and_colour_ends():
    img = heatmap(np.array([[0.0, 1.0], [0.5, np.nan]]), cell=3)
    assert img.shape == (3, 6, 6) and img.dtype == np.uint8
    assert img[:, 0, 0].tolist() == [68, 1, 84]  # 0 -> dark purple
    assert img[:, 0, 3].tolist() == [253, 231, 37]  # 1 -> yellow
    assert img[:, 3, 0].tolist() == [33, 145, 140]  # 0.5 -> teal
    assert img[:, 3, 3].tolist() == [68, 1, 84]  # NaN is drawn as 0, not a crash
    # each cell is a uniform block
    assert (img[:, :3, :3] == img[:, :1, :1]).all()


def test_heatmap_default_size_scales_with_the_team():
    assert heatmap(np.zeros((3, 3))).shape == (3, 192, 192)
    assert heatmap(np.zeros((64, 64))).shape == (3, 256, 256)  # at least 4 pixels per agent
