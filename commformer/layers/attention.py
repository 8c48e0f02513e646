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

The adjacency's gradient (``masked_weights``) is that of ``w_ij = A_ij exp(score_ij) / sum_m A_im exp(score_im)``,
the same weights forward when A is 0/1: a straight-through adjacency is exactly 1 on kept entries and 0 elsewhere,
so the forward value is unchanged, and this is the path that carries gradient to the graph logits, for the senders a
receiver hears and for those it does not (would a little of their message help?), all of them in the dense layout
and a sample in the gathered one. The temporal gates' decisions enter as constants: they learn through their
log-probs, commformer/gates.py.

Two layouts of the adjacency (``Senders``), one result. Small teams, or graphs where each receiver hears a good share
of the team, use the *dense* layout: every receiver is scored against every sender as a (B, H, N, N) matrix (einsum,
i.e. matrix products) and the pairs the graph leaves out are masked afterwards, O(B N^2 d). Large teams with a sparse
graph use the *gathered* layout: receiver i's K = k + 1 candidate senders (its k top-k senders and itself) are listed
in an (N, K) index, their keys and values are gathered into (B, N, K, d) and only those K pairs are scored, O(B N K d)
time and memory. The softmax, the mask and the product with the adjacency entries are the same function on both
(``masked_weights``: a pair outside the K listed ones would get weight exactly 0 in the dense layout anyway), so both
give the same outputs and the same gradients up to rounding, except for the graph logits' gradient from the senders
a receiver does not hear: the dense layout assesses every one, the gathered layout a sample of them per learner
forward (``Senders.probes``, exactly 0 forward; with every one of them sampled, the dense layout's gradient). Which
layout a graph uses is ``gathers(N, k)``, a function of the team size and k alone that ``CommGraph`` applies once,
when it is built, so the rollout and the learner's recomputation always take the same path whatever their batch
sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.functional import activation as make_activation

__all__ = [
    "GATHER_FACTOR",
    "PROBE_CAP",
    "CommBlock",
    "GraphAttention",
    "Senders",
    "block_mlp",
    "gathers",
    "masked_weights",
]

SELF_EDGE = 0
OTHER_EDGE = 1

GATHER_FACTOR = 16
"""The gathered layout is used when N >= GATHER_FACTOR * (k + 1) (``gathers``)."""


def gathers(n_agents: int, senders: int) -> bool:
    """Whether a graph over ``n_agents`` agents in which each receiver hears ``senders`` others (and itself) is attended
    over in the gathered layout (module docstring), rather than the dense one.

    The rule is N >= 16 (k + 1). The dense layout does N multiply-adds per receiver and feature, in matrix products;
    the gathered one does K = k + 1, but as gathers, elementwise products and sums (and a scatter-add of the
    gathered keys' and values' gradients), which cost more per operation. Measured on one CPU thread (the attention
    module's forward and backward, d = 64, N = 32..512; docs/BENCHMARKS.md, "Policy time and memory vs team size"),
    the two break even near N = 16 K with one head and N = 8 K with four. Every shipped config (teams of at most 20
    agents, or 64 with k = 16) keeps the dense layout; gathering starts at N = 32 with k = 1. The rule depends on N and
    k only, never on the batch: acting and the learner's recomputation run the same code on the same graph.
    """
    return n_agents >= GATHER_FACTOR * (senders + 1)


@dataclass(frozen=True)
class Senders:
    """A receiver-by-sender adjacency, in the layout graph attention reads it (module docstring).

    ``index`` None, the dense layout: ``weight`` is the adjacency itself, (*B, N, N), column j = sender j.
    Otherwise the gathered layout: ``index`` (N, K) int64 lists receiver i's candidate senders (no repeats; the graph
    lists the self-loop first), and ``weight`` (*B, N, K) holds their entries, ``weight[..., i, m] = A[..., i,
    index[i, m]]``; every sender that row i does not list has entry 0. Either way a zero entry is a sender not heard,
    and the entries carry the straight-through gradient to the graph logits.

    ``probes`` (gathered layout, learner forwards only): more senders per receiver, none listed in ``index``, as a
    gathered adjacency (N, P) whose entries are exactly 0 forward and carry the graph's gradient for those senders:
    attention assesses them without changing its output (``GraphAttention``).
    """

    index: Tensor | None
    weight: Tensor
    probes: Senders | None = None
    held_product: bool = False
    """Whether a heard sender's entry also gets the product form's gradient (``masked_weights``)."""

    def self_loops(self) -> Tensor:
        """Where the listed sender is the receiver itself: (N, N) identity, or (N, K) in the gathered layout; 0/1 in
        ``weight``'s dtype."""
        n = self.weight.shape[-2]
        device, dtype = self.weight.device, self.weight.dtype
        if self.index is None:
            return torch.eye(n, dtype=dtype, device=device)
        return (self.index == torch.arange(n, device=device).unsqueeze(-1)).to(dtype)

    def dense(self) -> Tensor:
        """The adjacency as a dense (*B, N, N) tensor (with the entries' gradient path, the probes' included); the
        dense layout's is ``weight`` itself. O(B N^2): for outputs and for the parts that read a dense adjacency, not
        for attention."""
        if self.index is None:
            return self.weight
        n = self.weight.shape[-2]
        index = self.index.expand(self.weight.shape)
        dense = self.weight.new_zeros((*self.weight.shape[:-1], n)).scatter(-1, index, self.weight)
        # A probe's entry is exactly 0 at a place no listed sender holds: the sum adds its gradient path only.
        return dense if self.probes is None else dense + self.probes.dense()

    def to(self, dtype: torch.dtype) -> Senders:
        """The same adjacency with entries of ``dtype``."""
        return replace(
            self, weight=self.weight.to(dtype), probes=None if self.probes is None else self.probes.to(dtype)
        )

    def rows(self, rows: Tensor) -> Senders:
        """The batch rows ``rows`` (an index or mask over the first batch dim of ``weight``)."""
        return replace(self, weight=self.weight[rows], probes=None if self.probes is None else self.probes.rows(rows))

    def reshape(self, *batch: int) -> Senders:
        """The entries with the batch dims ``batch``: (B, N, K) -> (*batch, N, K)."""
        probes = None if self.probes is None else self.probes.reshape(*batch)
        return replace(self, weight=self.weight.reshape(*batch, *self.weight.shape[-2:]), probes=probes)


PROBE_CAP = 0.0
"""How far above its row's best kept score an unkept candidate's score may count in its gradient (``masked_weights``):
at 0 a candidate weighs at most as much as the receiver's most attended kept sender. Uncapped, a candidate scored far
above the kept ones gets a slope of exp(that margin), the tangent of a change that saturates at once (measured up to
2e6 on random weights against ~1 for kept entries)."""


def masked_weights(scores: Tensor, edge: Tensor, held_product: bool = False) -> Tensor:
    """Attention weights ``softmax(scores masked where edge == 0) * edge``, ``edge`` broadcasting against ``scores``,
    with the gradient to ``edge`` of ``w_ij = edge_ij exp(s_ij) / sum_m edge_im exp(s_im)``.

    With a 0/1 ``edge`` the two are the same function of the scores (the softmax over the kept entries); they differ
    in what ``edge``'s gradient says, which is how the straight-through graph's logits learn (commformer/graph.py).
    The product's gradient is the weight ``p_ij`` times ``dL/dw_ij`` for a kept entry and 0 for every other: an
    edge left out is never assessed. The renormalised form gives a kept sender ``w_ij (dL/dw_ij - sum_m w_im
    dL/dw_im)``, its worth against the rest of the row, and a sender left out the same with the weight
    ``exp(s_ij) / sum_m edge_im exp(s_im)`` it would take: whether mixing a little of its message into what the
    receiver reads would lower the loss. So the forward value (rounding included) is the masked softmax's, and the
    second form enters as ``r - r.detach()`` on detached scores, only when ``edge`` needs a gradient. A candidate's
    score above its row's best kept one counts as ``PROBE_CAP`` above it at most. With ``held_product`` a kept entry
    gets the product form's gradient ``w_ij dL/dw_ij`` besides (``model.graph.held_product``): both pressures, whether
    hearing the sender at all helps, and whether it is worth more than the rest of the row.

    finfo.min rather than -inf in the mask: identical weights (exp underflows to exactly 0) whenever a row keeps an
    entry, and a row with none gives finite uniform weights that the product with ``edge`` then zeroes, not NaN.
    """
    weights = torch.softmax(scores.masked_fill(edge == 0, torch.finfo(scores.dtype).min), dim=-1)
    if not (torch.is_grad_enabled() and edge.requires_grad):
        return weights * edge
    return _AssessEdges.apply(weights * edge.detach(), scores.detach(), edge, held_product)


class _AssessEdges(torch.autograd.Function):
    """Identity on the attention weights forward; backward, also ``edge``'s gradient through the renormalised
    weights ``r_ij = edge_ij q_ij``, ``q_ij = exp(s_ij - top_i) / sum_m edge_im exp(s_im - top_i)`` (scores capped
    at ``PROBE_CAP`` above the row's best kept one): ``dL/dedge_ij = q_ij (g_ij - sum_m r_im g_im)`` with ``g`` the
    weights' upstream gradient (plus ``r_ij g_ij`` with ``held_product``), summed over the dims ``edge`` was broadcast
    along. Written by hand because autograd
    through the formula keeps five (B, H, N, N) intermediates and ran the dense layout's backward ~1.8x slower at
    N = 1,024; this keeps the scores alone and computes ``q`` in the backward."""

    @staticmethod
    def forward(ctx: Any, weights: Tensor, logits: Tensor, edge: Tensor, held_product: bool) -> Tensor:
        ctx.save_for_backward(logits, edge)
        ctx.held_product = held_product
        return weights.view_as(weights)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, Tensor, None]:
        logits, edge = ctx.saved_tensors
        top = _best_kept(logits, edge).unsqueeze(-1)
        q = torch.exp((logits - top).clamp_(max=PROBE_CAP))  # kept entries: exp(s - top) <= 1
        total = (q * edge).sum(-1, keepdim=True)
        q = q.div_(torch.where(total > 0, total, torch.ones_like(total)))
        kept = q * edge  # the renormalised weights, the masked softmax's on the kept entries
        inner = (kept * grad).sum(-1, keepdim=True)
        grad_edge = q.mul_(grad - inner)
        if ctx.held_product:
            grad_edge += kept * grad
        return grad, None, grad_edge.sum_to_size(edge.shape), None


def _best_kept(scores: Tensor, edge: Tensor) -> Tensor:
    """Each row's best score among its kept entries (``edge != 0``), detached, the last dim reduced; 0 for a row
    that keeps none. The shift of the renormalised weights (``masked_weights``, ``GraphAttention._assess``)."""
    with torch.no_grad():
        top = scores.masked_fill(edge == 0, -torch.inf).amax(-1)
        return torch.where(torch.isfinite(top), top, torch.zeros_like(top))


def _batched_adjacency(adjacency: Tensor, batch: int, n: int, k: int | None = None) -> Tensor:
    """Check and view an adjacency's entries (N, K) or (B, N, K) as (B or 1, N, K); K = N (the dense layout) unless
    given."""
    k = n if k is None else k
    if adjacency.dim() == 2:
        adjacency = adjacency.unsqueeze(0)  # (1, N, K)
    if adjacency.dim() != 3 or adjacency.shape[-2:] != (n, k) or adjacency.shape[0] not in (1, batch):
        raise ValueError(f"adjacency has shape {tuple(adjacency.shape)}; expected ({n}, {k}) or ({batch}, {n}, {k})")
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

    def forward(self, x: Tensor, adjacency: Tensor | Senders) -> Tensor:
        """Attend over senders.

        Args:
            x: (B, N, d) agent features.
            adjacency: a dense (N, N) or (B, N, N) adjacency, row i = receiver, column j = sender, zero entries
                masked; or ``Senders`` in either layout, entries (N, K) or (B, N, K). Every row must keep at least
                one entry (the self-loop), else the row's output is 0.

        Returns:
            (B, N, d).
        """
        b, n, d = x.shape
        senders = adjacency if isinstance(adjacency, Senders) else Senders(None, adjacency)
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, d_head)
        if senders.index is None:
            mixed = self._dense(qkv, _batched_adjacency(senders.weight, b, n).to(x.dtype), senders.held_product)
        else:
            entries = _batched_adjacency(senders.weight, b, n, senders.index.shape[-1])  # (B or 1, N, K)
            mixed = self._gathered(qkv, senders.index, entries, senders.probes, senders.held_product)
        return self.out(mixed.reshape(b, n, d))  # (B, N, H * d_head) -> (B, N, d)

    def receiver_rows(
        self, x: Tensor, team: Tensor, receivers: Tensor, edges: Tensor, held_product: bool = False
    ) -> Tensor:
        """Single receivers' outputs, dense layout: row ``receivers[r]`` of ``forward(x, A)[team[r]]`` for any A whose
        row ``receivers[r]`` in team ``team[r]`` is ``edges[r]``, without forming the other receivers' queries and
        outputs (the critic's rerun of a receiver whose gate decision was not the greedy one, commformer/trunk.py).

        Args:
            x: (T, N, d) the teams' inputs; team: (R,) int, each receiver's team; receivers: (R,) int; edges: (R, N)
                each receiver's entries over the N senders, with their gradient path to the graph as in ``forward``;
                held_product: as ``Senders``.

        Returns:
            (R, d).
        """
        t, n, d = x.shape
        r, heads, dh = team.shape[0], self.num_heads, self.head_dim
        weight, bias = self.qkv.weight, self.qkv.bias  # rows [q | k | v], each head-major
        q = F.linear(x[team, receivers], weight[:d], bias[:d]).view(r, 1, heads, dh)  # (R, 1, H, d_head)
        k, v = F.linear(x, weight[d:], bias[d:]).view(t, n, 2, heads, dh).unbind(2)  # (T, N, H, d_head) each
        k, v = k[team], v[team]  # (R, N, H, d_head): every team's keys and values formed once
        r_q = self.rel_q.to(q.dtype)  # (2, H, d_head)
        r_k = self.rel_k.to(q.dtype)
        # The scores of ``scores`` on row receivers[r] only: "other" against every sender, "self" on the diagonal.
        # Products and sums rather than R tiny matrix products, as the gathered layout.
        other = ((q + r_q[OTHER_EDGE]) * (k + r_k[OTHER_EDGE])).sum(-1)  # (R, N, H)
        k_own = k[torch.arange(r, device=x.device), receivers]  # (R, H, d_head)
        own = ((q.squeeze(1) + r_q[SELF_EDGE]) * (k_own + r_k[SELF_EDGE])).sum(-1)  # (R, H)
        is_self = (torch.arange(n, device=x.device) == receivers.unsqueeze(-1)).unsqueeze(-1)  # (R, N, 1)
        scores = torch.where(is_self, own.unsqueeze(1), other).transpose(1, 2) / math.sqrt(dh)  # (R, H, N)
        weights = masked_weights(scores, edges.to(q.dtype).unsqueeze(1), held_product)  # (R, H, N)
        mixed = (weights.transpose(1, 2).unsqueeze(-1) * v).sum(1)  # (R, H, d_head)
        return self.out(mixed.reshape(r, d))

    def _dense(self, qkv: Tensor, adjacency: Tensor, held_product: bool = False) -> Tensor:
        """The dense layout: qkv (B, N, 3, H, d_head), adjacency (B or 1, N, N) -> mixed values (B, N, H, d_head)."""
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d_head)
        scores = self.scores(q, k)  # (B, H, N, N)
        edge = adjacency.to(q.dtype).unsqueeze(1)  # (B or 1, 1, N, N), broadcast over heads
        # (B, H, N, N); the product with A is the gradient path to the graph
        weights = masked_weights(scores, edge, held_product)
        return (weights @ v).transpose(1, 2)  # (B, N, H, d_head)

    def _gathered(
        self, qkv: Tensor, index: Tensor, entries: Tensor, probes: Senders | None = None, held_product: bool = False
    ) -> Tensor:
        """The gathered layout: qkv (B, N, 3, H, d_head), index (N, K), entries (B or 1, N, K) -> mixed values
        (B, N, H, d_head). ``probes``: senders to assess, not hear (``_assess``); ``held_product``: as ``Senders``.

        The same scores as ``scores`` on the listed pairs only, one column m of the index at a time: the "other" keys
        of senders ``index[:, m]`` (the edge embedding added before the gather), the "self" score on each agent's own
        query and key where the listed sender is the receiver. Column by column rather than one (B, N, K, d) gather:
        the same work, but every intermediate is (B, N, d), which the CPU allocator recycles; measured 2.4x faster
        forward and backward than one gather at N = 1,024, B = 64, d = 64, K = 5, where a (B, N, K, d) intermediate is
        84 MB and is paged in afresh for every operation. The values are mixed the same way.
        """
        n = qkv.shape[1]
        q, k, v = qkv.unbind(2)  # each (B, N, H, d_head)
        r_q = self.rel_q.to(q.dtype)  # (2, H, d_head)
        r_k = self.rel_k.to(q.dtype)
        q_other = q + r_q[OTHER_EDGE]  # (B, N, H, d_head)
        k_other = k + r_k[OTHER_EDGE]
        own = ((q + r_q[SELF_EDGE]) * (k + r_k[SELF_EDGE])).sum(-1)  # (B, N, H)
        is_self = (index == torch.arange(n, device=index.device).unsqueeze(-1)).unsqueeze(-1)  # (N, K, 1)
        columns = []
        for m in range(index.shape[-1]):
            other = (q_other * k_other.index_select(1, index[:, m])).sum(-1)  # (B, N, H), sender index[i, m]
            # torch.where sends zero gradient to the unselected branch, so each pair's score has one edge type.
            columns.append(torch.where(is_self[:, m], own, other))
        scores = torch.stack(columns, dim=-1) / math.sqrt(self.head_dim)  # (B, N, H, K)
        weights = masked_weights(scores, entries.to(q.dtype).unsqueeze(-2), held_product)  # (B, N, H, K)
        mixed = weights[..., :1] * v.index_select(1, index[:, 0])  # (B, N, H, d_head)
        for m in range(1, index.shape[-1]):
            mixed = mixed + weights[..., m : m + 1] * v.index_select(1, index[:, m])
        if probes is not None and torch.is_grad_enabled() and probes.weight.requires_grad:
            mixed = mixed + self._assess(q_other, k_other, v, scores, entries, mixed, probes)
        return mixed

    def _assess(
        self, q: Tensor, k: Tensor, v: Tensor, scores: Tensor, entries: Tensor, mixed: Tensor, probes: Senders
    ) -> Tensor:
        """A term exactly 0 forward whose gradient to each probe's entry is ``masked_weights``' for a sender left out:
        the slope of receiver i's output as a little of sender j's message is mixed in, ``(u_j / sum) (v_j - out_i)``
        with ``u_j = exp(s_ij - top)``, ``s_ij`` capped at ``PROBE_CAP`` above the row's best kept score ``top`` and
        ``sum`` the kept entries' ``exp(s - top)``. Everything but the entries is detached: the probes change no
        forward value and teach nothing but the graph.

        Args: q, k: the "other" queries and keys (B, N, H, d_head); v: values (B, N, H, d_head); scores (B, N, H, K)
        and entries (B or 1, N, K) of the listed senders; mixed (B, N, H, d_head); probes: index (N, P), entries
        (B or 1, N, P) (exactly 0).
        """
        assert probes.index is not None
        n = q.shape[1]
        probe_entries = _batched_adjacency(probes.weight, q.shape[0], n, probes.index.shape[-1])  # (B or 1, N, P)
        top = _best_kept(scores, entries.unsqueeze(-2))  # (B, N, H); the self-loop is always kept
        with torch.no_grad():
            total = (torch.exp(scores - top.unsqueeze(-1)) * entries.unsqueeze(-2)).sum(-1)  # (B, N, H)
            total = torch.where(total > 0, total, torch.ones_like(total))
            slopes = []
            for p in range(probes.index.shape[-1]):
                score = (q * k.index_select(1, probes.index[:, p])).sum(-1) / math.sqrt(self.head_dim)  # (B, N, H)
                weight = torch.exp((score - top).clamp(max=PROBE_CAP)) / total
                slopes.append(weight.unsqueeze(-1) * (v.index_select(1, probes.index[:, p]) - mixed))  # (B, N, H, dh)
        term = probe_entries[..., 0, None, None] * slopes[0]
        for p in range(1, len(slopes)):
            term = term + probe_entries[..., p, None, None] * slopes[p]
        return term


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

    def forward(self, x: Tensor, adjacency: Tensor | Senders) -> Tensor:
        """Args: x (B, N, d), adjacency (N, N) or (B, N, N), or ``Senders``. Returns (B, N, d)."""
        x = x + self.attn(self.norm_attn(x), adjacency)
        return x + self.mlp(self.norm_mlp(x))

    def receiver_rows(
        self, x: Tensor, team: Tensor, receivers: Tensor, edges: Tensor, held_product: bool = False
    ) -> Tensor:
        """Row ``receivers[r]`` of ``forward(x, A)[team[r]]``, dense layout (``GraphAttention.receiver_rows``): x (T, N,
        d), team, receivers (R,), edges (R, N) -> (R, d)."""
        h = x[team, receivers] + self.attn.receiver_rows(self.norm_attn(x), team, receivers, edges, held_product)
        return h + self.mlp(self.norm_mlp(h))
