"""Naive reference implementations, used only by tests.

Written the slow, obvious way (Python loops over samples, receivers, heads and senders; Python ``sorted``
for top-k) so that the fast versions in ``attention.py`` and ``graph.py`` can be checked against them on
outputs and gradients in float64. They share parameters with the fast modules but none of their code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from commformer.layers.attention import CommBlock, GraphAttention

__all__ = [
    "naive_comm_block",
    "naive_graph_attention",
    "naive_straight_through_topk",
    "naive_topk_senders",
]


def naive_topk_senders(logits: Tensor, k: int) -> list[list[int]]:
    """Senders kept by each receiver: the ``k`` largest logits of row i among j != i.

    Ties are broken by cyclic distance ``(j - i) % N`` (nearest after i first), as in ``graph.py``.

    Returns:
        ``senders[i]`` sorted ascending, ``len == k`` for every i.
    """
    n = logits.shape[0]
    rows = logits.detach().tolist()
    out = []
    for i in range(n):
        keyed = [(-rows[i][j], (j - i) % n, j) for j in range(n) if j != i]
        ranked = [j for _, _, j in sorted(keyed)]  # largest logit first, then nearest after i
        out.append(sorted(ranked[:k]))
    return out


def naive_straight_through_topk(logits: Tensor, k: int, tau: float, noise: Tensor | None = None) -> Tensor:
    """Row-by-row straight-through top-k adjacency (N, N): hard forward, softmax-over-senders gradient."""
    n = logits.shape[0]
    senders = naive_topk_senders(logits, k)
    perturbed = logits if noise is None else logits + noise
    rows = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        row_soft: list[Tensor] = [logits.new_zeros(())] * n
        if others:
            soft = torch.softmax(torch.stack([perturbed[i, j] / tau for j in others]), dim=0)
            for idx, j in enumerate(others):
                row_soft[j] = soft[idx]
        row = []
        for j in range(n):
            hard = 1.0 if (j == i or j in senders[i]) else 0.0
            row.append(hard - row_soft[j].detach() + row_soft[j])
        rows.append(torch.stack(row))
    return torch.stack(rows)


def naive_graph_attention(attn: GraphAttention, x: Tensor, adjacency: Tensor) -> Tensor:
    """Graph attention with loops over samples, receivers and heads, using ``attn``'s parameters.

    Args:
        attn: the module whose parameters to use.
        x: (B, N, d).
        adjacency: (N, N) or (B, N, N).

    Returns:
        (B, N, d).
    """
    b, n, d = x.shape
    h, dh = attn.num_heads, attn.head_dim
    if adjacency.dim() == 2:
        adjacency = adjacency.expand(b, n, n)
    w_q, w_k, w_v = attn.qkv.weight.split(d, dim=0)  # each (d, d)
    b_q, b_k, b_v = attn.qkv.bias.split(d, dim=0)
    outputs = []
    for s in range(b):
        agents = []
        for i in range(n):
            heads = []
            senders = [j for j in range(n) if adjacency[s, i, j] != 0]
            for head in range(h):
                rows = slice(head * dh, (head + 1) * dh)
                q_i = x[s, i] @ w_q[rows].T + b_q[rows]
                scores, values = [], []
                for j in range(n):
                    if j not in senders:
                        continue
                    edge = 0 if j == i else 1
                    k_j = x[s, j] @ w_k[rows].T + b_k[rows]
                    v_j = x[s, j] @ w_v[rows].T + b_v[rows]
                    q_e = q_i + attn.rel_q[edge, head].to(x.dtype)
                    k_e = k_j + attn.rel_k[edge, head].to(x.dtype)
                    scores.append(torch.dot(q_e, k_e) / math.sqrt(dh))
                    values.append(v_j * adjacency[s, i, j].to(x.dtype))
                weights = torch.softmax(torch.stack(scores), dim=0)
                heads.append(sum((w * v for w, v in zip(weights, values, strict=True)), x.new_zeros(dh)))
            agents.append(torch.cat(heads))
        outputs.append(torch.stack(agents))
    mixed = torch.stack(outputs)  # (B, N, d)
    return F.linear(mixed, attn.out.weight, attn.out.bias)


def naive_comm_block(block: CommBlock, x: Tensor, adjacency: Tensor) -> Tensor:
    """``CommBlock`` with the naive attention: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``."""
    x = x + naive_graph_attention(block.attn, block.norm_attn(x), adjacency)
    return x + block.mlp(block.norm_mlp(x))
