"""Per-agent history encoders: an agent's last L observations -> one embedding, before the agents communicate.

    window (B, L, D) --Linear D->d, LN (+ learned positions for attention)--> u (B, L, d)
    u --LN--> mixer over time --take the last position--> + u[:, -1]  -> h (B, d)

One residual pre-LN block. The mixer is

- ``orchid``: an ``OrchidBlock`` (commformer/layers/orchid.py) over the whole window, built with
  ``max_len = L``; its last position is kept. Orchid's data-dependent kernel reads the whole window, so it is
  not causal *within* a window; it is causal here because the window of step t holds steps t - L + 1 .. t and
  nothing later (the team env builds it, envs/team.py), and only the last position is used.
- ``attention``: multi-head softmax attention of the last position over the window, with learned absolute
  positions (attention alone cannot tell the order). Computing only the last query gives exactly the last row
  of causal attention (the last position may see every position), in O(L) instead of O(L^2).

Why windows in the observation rather than a recurrent state: the PPO consistency rule (docs/DESIGN.md). The window
is part of the observation, so RLlib stores it in the batch and the learner recomputes the action distribution from
exactly what the EnvRunner saw; there is no hidden state to carry, replay or truncate. The cost is memory: L * N * D
floats per stored step, bounded and independent of the episode length.

Zero rows before the episode's first step are ordinary input: the encoder does not mask them (the rollout and
the update see the same zeros, so the ratio stays exact).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from commformer.layers.orchid import OrchidBlock, OrchidConfig
from commformer.validate import require_int

__all__ = ["SEQUENCE_ENCODERS", "HistoryEncoder", "LastQueryAttention"]

SEQUENCE_ENCODERS: tuple[str, ...] = ("orchid", "attention")
"""Encoders that read a window of observations (``model.encoder`` values other than ``mlp``)."""


class LastQueryAttention(nn.Module):
    """Multi-head softmax attention of the last position over the whole window: (B, L, d) -> (B, d).

    Equals the last row of causal self-attention (``is_causal=True``) with the same weights.

    Attributes:
        query: Linear d -> d (applied to the last position only).
        key_value: Linear d -> 2d, laid out as [k | v], each head-major (H, d_head).
        out: Linear d -> d.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key_value = nn.Linear(embed_dim, 2 * embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, L, d) -> (B, d)."""
        b, length, d = x.shape
        h = self.num_heads
        q = self.query(x[:, -1:]).view(b, 1, h, d // h).transpose(1, 2)  # (B, H, 1, d_head)
        kv = self.key_value(x).view(b, length, 2, h, d // h)  # (B, L, 2, H, d_head)
        k, v = kv.permute(2, 0, 3, 1, 4)  # each (B, H, L, d_head)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, d_head); no mask: the last query sees all
        return self.out(y.transpose(1, 2).reshape(b, d))  # (B, d)


class HistoryEncoder(nn.Module):
    """Encodes each agent's window of observations over time; see the module docstring.

    Args:
        kind: "orchid" or "attention".
        obs_dim: D.
        embed_dim: d.
        history: L, the window length every input must have.
        num_heads: heads of the ``attention`` mixer (unused by ``orchid``).
        orchid: the Orchid block's settings; its ``max_len`` is replaced by ``history``.
    """

    def __init__(
        self, kind: str, obs_dim: int, embed_dim: int, history: int, num_heads: int, orchid: OrchidConfig
    ) -> None:
        super().__init__()
        if kind not in SEQUENCE_ENCODERS:
            raise ValueError(f"model.encoder={kind!r} is not a sequence encoder; expected one of {SEQUENCE_ENCODERS}")
        require_int("model.history", history, 1)
        self.kind = kind
        self.obs_dim, self.history = obs_dim, history
        self.embed = nn.Linear(obs_dim, embed_dim)
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.mixer_norm = nn.LayerNorm(embed_dim)
        self.positions: nn.Parameter | None = None
        self.mixer: OrchidBlock | LastQueryAttention
        if kind == "orchid":
            self.mixer = OrchidBlock(embed_dim, dataclasses.replace(orchid, max_len=history))
        else:
            self.mixer = LastQueryAttention(embed_dim, num_heads)
            self.positions = nn.Parameter(0.02 * torch.randn(history, embed_dim))

    def forward(self, window: Tensor) -> Tensor:
        """One embedding per window.

        Args:
            window: (B, L, D), oldest step first, the current step last.

        Returns:
            (B, d): the residual stream at the last position after one pre-LN block.
        """
        if window.dim() != 3 or window.shape[1:] != (self.history, self.obs_dim):
            raise ValueError(f"window has shape {tuple(window.shape)}; expected (B, {self.history}, {self.obs_dim})")
        u = self.embed_norm(self.embed(window))  # (B, L, d)
        if self.positions is not None:
            u = u + self.positions  # (L, d) broadcast over B
        z = self.mixer_norm(u)  # (B, L, d)
        # Orchid returns every position (B, L, d); keep the last. The attention mixer computes only that one.
        mixed = self.mixer(z)[:, -1] if isinstance(self.mixer, OrchidBlock) else self.mixer(z)  # (B, d)
        return u[:, -1] + mixed  # (B, d)
