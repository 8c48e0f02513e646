"""`HistoryWindow`: the team's last L observations, the `history` entry of a `TeamEnv` observation.

The window is part of the observation on purpose (commformer/history.py is its reader): RLlib stores it in the
batch, so the learner recomputes each action's distribution from exactly the window the EnvRunner acted on (the
PPO consistency rule, docs/DESIGN.md), with no recurrent state to carry or replay; and it holds only
steps up to now, so no future observation can reach an action. Memory per stored step is L * N * D float32s,
bounded whatever the episode length (L=1024, N=3, D=18: 221 KB).

Layout: a preallocated buffer of 2L rows in which step t is written twice, at rows p and p + L (p = t mod L). The
window is then always the contiguous slice p + 1 .. p + L, oldest first: a step costs two row writes and the one
copy that is returned, and nothing is shifted. Rows not yet written are zero (before the episode's first step).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces


class HistoryWindow:
    """The last `length` arrays of shape `row_shape` pushed since `clear()`, oldest first, zeros before the first.

    Args:
        length: L >= 1.
        row_shape: the shape of one step, (N, D) for a team.
    """

    def __init__(self, length: int, row_shape: tuple[int, ...]) -> None:
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 1:
            raise ValueError(f"history={length!r}; expected an integer >= 1")
        self.length = int(length)
        self._rows = np.zeros((2 * self.length, *row_shape), dtype=np.float32)  # (2L, *row_shape)
        self._pos = 0

    def clear(self) -> None:
        """Forget every step (an episode starts)."""
        self._rows[:] = 0.0
        self._pos = 0

    def push(self, row: np.ndarray) -> np.ndarray:
        """Append this step and return a copy of the window, (L, *row_shape), this step last."""
        p, length = self._pos, self.length
        self._rows[p] = row
        self._rows[p + length] = row
        self._pos = (p + 1) % length
        return self._rows[p + 1 : p + 1 + length].copy()

    def space(self, low: np.ndarray, high: np.ndarray) -> spaces.Box:
        """The Box of windows whose rows lie in [low, high]; zero rows (before the start) are always inside."""
        shape = (self.length, *low.shape)
        low, high = np.minimum(low, 0.0), np.maximum(high, 0.0)
        return spaces.Box(np.broadcast_to(low, shape), np.broadcast_to(high, shape), dtype=np.float32)
