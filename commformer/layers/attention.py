"""Graph-masked, relation-aware multi-head attention over agents (CommFormer, arXiv 2405.08550, eq. 4-6).

Receiver i attends to the senders j with ``A[i, j] != 0``::

    score_ij = (q_i + r_q[e_ij]) . (k_j + r_k[e_ij]) / sqrt(d_head)
    w_i      = softmax_j(score_ij masked to -inf where A[i, j] == 0) * A[i, j]
    out_i    = sum_j w_ij v_j

Edge types. The official code embeds "edge" / "no-edge"; but no-edge entries are always masked to -inf, so
that embedding never influences anything (a dead parameter). We use ``e_ij = 0`` for the self-loop and
``e_ij = 1`` for a message from another agent, which lets an agent weigh its own state against what it
hears. This is a deliberate departure.

Scaling: the score is divided by sqrt(d_head) once (the official code scales twice).

Multiplying the softmax weights by ``A``: with a straight-through adjacency, A is exactly 1 on kept entries,
so the forward value is unchanged, but this product is the path that carries gradient to the graph logits
(the temporal gates' decisions enter as constants: they learn through their log-probs, commformer/gates.py).

N is small (<= 64), so attention is written out with einsum over a dense (N, N) score matrix.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from commformer.functional import activation as make_activation

__all__ = ["CommBlock", "GraphAttention", "block_mlp", "masked_weights"]

SELF_EDGE = 0
OTHER_EDGE = 1


def masked_weights(scores: Tensor, edge: Tensor) -> Tensor:
    """Attention weights ``softmax(scores masked where edge == 0) * edge``; ``edge`` broadcasts against ``scores``.

    finfo.min rather than -inf: identical weights (exp underflows to exactly 0) whenever a row keeps an entry, and a
    row with none gives finite uniform weights that the product with ``edge`` then zeroes, instead of NaN. The
    product is the gradient path to a straight-through adjacency (exactly 1 on kept entries, so the forward value
    does not change).
    """
    scores = scores.masked_fill(edge == 0, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=-1) * edge


def _batched_adjacency(adjacency: Tensor, batch: int, n: int) -> Tensor:
    """Check and view an adjacency (N, N) or (B, N, N) as (B or 1, N, N)."""
    if adjacency.dim() == 2:
        adjacency = adjacency.unsqueeze(0)  # (1, N, N)
    if adjacency.dim() != 3 or adjacency.shape[-2:] != (n, n) or adjacency.shape[0] not in (1, batch):
        raise ValueError(f"adjacency has shape {tuple(adjacency.shape)}; expected ({n}, {n}) or ({batch}, {n}, {n})")
    return adjacency


class GraphAttention(nn.Module):
    """Multi-head attention of each agent over its senders in a communication graph.

    Attributes:
        qkv: Linear d -> 3d, output laid out as [q | k | v], each head-major (H, d_head).
        rel_q, rel_k: (2, H, d_head) edge-type embeddings added to queries and keys
            (index 0 = self-loop, 1 = other agent).
        out: Linear d -> d.
    """

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)
        self.out = nn.Linear(embed_dim, embed_dim)
        # Small init (GPT-style 0.02) so the relation terms start as a perturbation of plain attention;
        # the official nn.Embedding default (std 1) would dominate q.k at d_head = 64.
        self.rel_q = nn.Parameter(0.02 * torch.randn(2, num_heads, self.head_dim))
        self.rel_k = nn.Parameter(0.02 * torch.randn(2, num_heads, self.head_dim))

    def scores(self, q: Tensor, k: Tensor) -> Tensor:
        """Relation-aware scores before masking.

        Args:
            q, k: (B, H, N, d_head).

        Returns:
            (B, H, N, N) scores, row i = receiver, column j = sender, already divided by sqrt(d_head).
        """
        n = q.shape[-2]
        # Only two edge types, and the type depends on i == j only: compute the "other" score for every pair
        # and the "self" score for the diagonal, instead of gathering an (N, N, d_head) embedding per pair.
        r_q = self.rel_q.to(q.dtype)  # (2, H, d_head)
        r_k = self.rel_k.to(q.dtype)
        q_other = q + r_q[OTHER_EDGE].unsqueeze(-2)  # (B, H, N, d_head)
        k_other = k + r_k[OTHER_EDGE].unsqueeze(-2)
        other = torch.einsum("bhid,bhjd->bhij", q_other, k_other)  # (B, H, N, N)
        q_self = q + r_q[SELF_EDGE].unsqueeze(-2)
        k_self = k + r_k[SELF_EDGE].unsqueeze(-2)
        own = (q_self * k_self).sum(-1)  # (B, H, N)
        diag = torch.eye(n, dtype=torch.bool, device=q.device)
        # torch.where sends zero gradient to the unselected branch, so each pair's score has one edge type.
        scores = torch.where(diag, torch.diag_embed(own), other)  # (B, H, N, N)
        return scores / math.sqrt(self.head_dim)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """Attend over senders.

        Args:
            x: (B, N, d) agent features.
            adjacency: (N, N) or (B, N, N), row i = receiver, column j = sender; zero entries are masked.
                Every row must keep at least one entry (the self-loop), else the row's output is 0.

        Returns:
            (B, N, d).
        """
        b, n, d = x.shape
        adjacency = _batched_adjacency(adjacency, b, n).to(x.dtype)  # (B or 1, N, N)
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d_head)
        scores = self.scores(q, k)  # (B, H, N, N)
        edge = adjacency.unsqueeze(1)  # (B or 1, 1, N, N), broadcast over heads
        weights = masked_weights(scores, edge)  # (B, H, N, N); the product with A is the gradient path to the graph
        mixed = weights @ v  # (B, H, N, d_head)
        mixed = mixed.transpose(1, 2).reshape(b, n, d)  # (B, N, H * d_head)
        return self.out(mixed)


def block_mlp(embed_dim: int, mlp_ratio: int, activation: str) -> nn.Sequential:
    """A transformer block's MLP: Linear d -> ratio d, activation, Linear ratio d -> d."""
    return nn.Sequential(
        nn.Linear(embed_dim, mlp_ratio * embed_dim),
        make_activation(activation),
        nn.Linear(mlp_ratio * embed_dim, embed_dim),
    )


class CommBlock(nn.Module):
    """Pre-LN transformer block over agents: ``x + attn(LN(x), A)`` then ``x + MLP(LN(x))`` (GELU by default)."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int, activation: str = "gelu") -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(embed_dim)
        self.attn = GraphAttention(embed_dim, num_heads)
        self.norm_mlp = nn.LayerNorm(embed_dim)
        self.mlp = block_mlp(embed_dim, mlp_ratio, activation)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        """Args: x (B, N, d), adjacency (N, N) or (B, N, N). Returns (B, N, d)."""
        x = x + self.attn(self.norm_attn(x), adjacency)
        return x + self.mlp(self.norm_mlp(x))
