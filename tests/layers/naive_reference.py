"""Naive reference implementations, used only by tests.

Written the slow, obvious way (Python loops over samples, receivers, heads and senders; Python ``sorted``
for top-k) so that the fast versions in ``attention.py`` and ``graph.py`` can be checked against them on
outputs and gradients in float64. They share parameters with the fast modules but none of their code.
The Orchid section checks ``orchid.py`` the same way, without torch.fft; the mixture-of-experts section at the
end checks ``moe.py`` one input at a time (top-K by Python ``sorted``, softmax written out with ``exp``, each
selected expert with plain matmuls on that one input; no batching, gather, sort or einsum).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor
from torch.nn import functional as F

from commformer.layers.attention import PROBE_CAP, CommBlock, GraphAttention
from commformer.layers.decoder import ActionDecoder, DecoderBlock, MaskedAttention
from commformer.layers.moe import MoEHead
from commformer.layers.orchid import CrossCorrelationConditioner, OrchidBlock, PhaseFreeConditioner

__all__ = [
    "naive_action_decoder",
    "naive_comm_block",
    "naive_expert",
    "naive_gate",
    "naive_graph_attention",
    "naive_moe",
    "naive_moe_losses",
    "naive_orchid_block",
    "naive_orchid_kernel",
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


def _naive_entry_weights(scores: list[Tensor], entries: list[Tensor]) -> Tensor:
    """Every candidate's exp(score) times its entry, over their sum: a sender not heard (entry 0) gets weight 0 but its
    entry a gradient of its own, its score counted at most PROBE_CAP above the best heard one (as masked_weights)."""
    best = max(float(score.detach()) for score, entry in zip(scores, entries, strict=True) if entry != 0)
    capped = [score.clamp(max=best + PROBE_CAP) for score in scores]
    numerators = [entry * torch.exp(score) for score, entry in zip(capped, entries, strict=True)]
    return torch.stack(numerators) / sum(numerators)


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
            for head in range(h):
                rows = slice(head * dh, (head + 1) * dh)
                q_i = x[s, i] @ w_q[rows].T + b_q[rows]
                scores, values = [], []
                for j in range(n):
                    edge = 0 if j == i else 1
                    k_j = x[s, j] @ w_k[rows].T + b_k[rows]
                    v_j = x[s, j] @ w_v[rows].T + b_v[rows]
                    q_e = q_i + attn.rel_q[edge, head].to(x.dtype)
                    k_e = k_j + attn.rel_k[edge, head].to(x.dtype)
                    scores.append(torch.dot(q_e, k_e) / math.sqrt(dh))
                    values.append(v_j)
                weights = _naive_entry_weights(scores, [adjacency[s, i, j].to(x.dtype) for j in range(n)])
                heads.append(sum((w * v for w, v in zip(weights, values, strict=True)), x.new_zeros(dh)))
            agents.append(torch.cat(heads))
        outputs.append(torch.stack(agents))
    mixed = torch.stack(outputs)  # (B, N, d)
    return F.linear(mixed, attn.out.weight, attn.out.bias)


def naive_comm_block(block: CommBlock, x: Tensor, adjacency: Tensor) -> Tensor:
    """``CommBlock`` with the naive attention: ``x + attn(LN(x))`` then ``x + MLP(LN(x))``."""
    x = x + naive_graph_attention(block.attn, block.norm_attn(x), adjacency)
    return x + block.mlp(block.norm_mlp(x))


# ======================================================================================================================
# Action decoder (decoder.py): who reads what is decided per agent from the rule in words ("agent i reads the start
# token and the actions of the agents before it that it hears"), not from the mask matrices; attention one query at a
# time.
# ======================================================================================================================


def _naive_masked_attention(attn: MaskedAttention, query: Tensor, keys: list[Tensor], edges: list[Tensor]) -> Tensor:
    """One query (d,) over the readable keys (each (d,)) with their mask entries; ``attn``'s parameters."""
    d = query.shape[0]
    h, dh = attn.num_heads, attn.head_dim
    w_k, w_v = attn.key_value.weight.split(d, dim=0)
    b_k, b_v = attn.key_value.bias.split(d, dim=0)
    heads = []
    for head in range(h):
        rows = slice(head * dh, (head + 1) * dh)
        q = query @ attn.query.weight[rows].T + attn.query.bias[rows]
        scores = [torch.dot(q, key @ w_k[rows].T + b_k[rows]) / math.sqrt(dh) for key in keys]
        weights = _naive_entry_weights(scores, edges)
        values = [key @ w_v[rows].T + b_v[rows] for key in keys]
        heads.append(sum((w * v for w, v in zip(weights, values, strict=True)), query.new_zeros(dh)))
    return F.linear(torch.cat(heads), attn.out.weight, attn.out.bias)


def _naive_heard(adjacency: Tensor, agent: int) -> list[tuple[int, Tensor]]:
    """What agent ``agent`` may read in the decoder, as (token index, mask entry): the start token, and the action
    token (index j + 1) of every earlier agent j, with entry 0 where it does not hear j. ``adjacency`` is one sample's
    (N, N)."""
    earlier = [(j + 1, adjacency[agent, j]) for j in range(agent)]
    return [(0, adjacency.new_ones(())), *earlier]


def _naive_decoder_block(
    block: DecoderBlock, agents: list[Tensor], tokens: list[Tensor], adjacency: Tensor
) -> tuple[list[Tensor], list[Tensor]]:
    """One ``DecoderBlock`` on one sample's agent features and action tokens (lists of (d,))."""
    n = len(agents)
    normed = [block.norm_tokens(t) for t in tokens]
    new_tokens = []
    for q in range(n):  # agent q - 1's action token reads what agent q - 1 reads, and itself
        own = adjacency.new_ones(())
        readable = [(0, own)] if q == 0 else [*_naive_heard(adjacency, q - 1), (q, own)]
        keys, edges = [normed[p] for p, _ in readable], [e for _, e in readable]
        new_tokens.append(tokens[q] + _naive_masked_attention(block.token_attn, normed[q], keys, edges))
    keys_all = [block.norm_keys(t) for t in new_tokens]
    new_agents = []
    for i in range(n):
        readable = _naive_heard(adjacency, i)
        keys, edges = [keys_all[p] for p, _ in readable], [e for _, e in readable]
        z = agents[i] + _naive_masked_attention(block.agent_attn, block.norm_query(agents[i]), keys, edges)
        new_agents.append(z + block.mlp(block.norm_mlp(z)))
    return new_agents, new_tokens


def naive_action_decoder(decoder: ActionDecoder, features: Tensor, adjacency: Tensor, actions: Tensor) -> Tensor:
    """``ActionDecoder.forward`` one sample, agent and token at a time.

    Agent i reads the start token and, for every agent j < i with ``adjacency[i, j] != 0``, agent j's action token
    (its exp(score) weighted by that entry); agent j's action token reads the start token, itself, and the tokens
    agent j reads.
    """
    b, n, _ = features.shape
    out = []
    for s in range(b):
        ids = [0] + [int(actions[s, j]) + 1 for j in range(n - 1)]  # token q: start, then agent q - 1's action
        tokens = [decoder.embed_activation(decoder.action_embed.weight[i]) for i in ids]
        agents = [features[s, i] for i in range(n)]
        for block in decoder.blocks:
            agents, tokens = _naive_decoder_block(cast(DecoderBlock, block), agents, tokens, adjacency[s])
        out.append(torch.stack([decoder.norm(z) for z in agents]))
    return torch.stack(out)


# ======================================================================================================================
# Orchid (orchid.py): direct sums only. DFTs are matrices of cos / sin built by hand (no torch.fft), every convolution
# is a loop over taps or output steps, and h0 is evaluated lag by lag. O(L^2) per channel; shares only parameters
# with OrchidBlock.
# ======================================================================================================================


def _naive_dft_angles(length: int, dtype: torch.dtype) -> Tensor:
    """Angles 2 pi k t / n of the size n = 2L DFT for lags t in [0, L) and bins k in [0, L]: (L, L + 1).

    ``k * t`` is reduced mod n in integers first, so large products lose no accuracy.
    """
    n = 2 * length
    products = torch.outer(torch.arange(length), torch.arange(length + 1)) % n  # (L, L + 1), exact integers
    return (2 * math.pi / n) * products.to(dtype)


def _naive_rfft(x: Tensor) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of X_k = sum_t x_t exp(-2 pi i k t / 2L), k = 0..L: (..., L) -> 2 x (..., L + 1)."""
    angles = _naive_dft_angles(x.shape[-1], x.dtype)  # (L, L + 1)
    return x @ torch.cos(angles), -(x @ torch.sin(angles))


def _naive_irfft_causal(real: Tensor, imag: Tensor) -> Tensor:
    """Lags 0..L-1 of the real length-2L signal whose half spectrum (bins 0..L) is ``real + i imag``.

    x_t = (1 / 2L) sum_{k=0}^{2L-1} X_k exp(2 pi i k t / 2L) with X_{2L-k} = conj(X_k): bins 1..L-1 count twice,
    and bins 0 and L once with only their real part (irfft ignores those imaginary parts; so does this).

    Args:
        real, imag: (..., L + 1).

    Returns:
        (..., L).
    """
    length = real.shape[-1] - 1
    angles = _naive_dft_angles(length, real.dtype)  # (L, L + 1)
    weights = torch.full((length + 1,), 2.0, dtype=real.dtype)
    weights[0] = weights[-1] = 1.0
    cos = torch.cos(angles) * weights  # (L, L + 1)
    sin = torch.sin(angles) * weights
    sin[:, 0] = sin[:, -1] = 0.0
    return (real @ cos.T - imag @ sin.T) / (2 * length)


def _naive_causal_depthwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """out[:, c, t] = bias[c] + sum_j weight[c, 0, j] * x[:, c, t - (k - 1) + j], x = 0 before t = 0.

    Args:
        x: (B, C, L); weight: (C, 1, k); bias: (C,) or None.

    Returns:
        (B, C, L).
    """
    k = weight.shape[-1]
    columns = []
    for t in range(x.shape[-1]):
        acc = x.new_zeros(x.shape[:-1]) if bias is None else bias.expand(x.shape[:-1])  # (B, C)
        for j in range(k):
            s = t - (k - 1) + j
            if s >= 0:
                acc = acc + weight[:, 0, j] * x[:, :, s]
        columns.append(acc)
    return torch.stack(columns, dim=-1)


def _naive_centred_conv(x: Tensor, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    """Grouped conv over the last axis with k // 2 zeros on each side.

    out[:, o, f] = bias[o] + sum_i sum_j weight[o, i, j] * x[:, g(o) * I + i, f + j - k // 2], I inputs per group.

    Args:
        x: (B, C_in, F); weight: (C_out, C_in / groups, k); bias: (C_out,) or None.

    Returns:
        (B, C_out, F).
    """
    batch, _, freqs = x.shape
    c_out, per_group, k = weight.shape
    outputs = []
    for o in range(c_out):
        group = o // (c_out // groups)
        bins = []
        for f in range(freqs):
            acc = x.new_zeros(batch) if bias is None else bias[o].expand(batch)  # (B,)
            for i in range(per_group):
                for j in range(k):
                    src = f + j - k // 2
                    if 0 <= src < freqs:
                        acc = acc + weight[o, i, j] * x[:, group * per_group + i, src]
            bins.append(acc)
        outputs.append(torch.stack(bins, dim=-1))
    return torch.stack(outputs, dim=1)


def _naive_implicit_filter(block: OrchidBlock, length: int, dtype: torch.dtype) -> Tensor:
    """h0 lag by lag: FFN_sin([t, cos(2 pi b t), sin(2 pi b t)]) * exp(-t * rate), t = lag / max_len: (D, L)."""
    filt = block.implicit_filter
    taps = []
    for lag in range(length):
        t = lag / filt.max_len
        bands = range(1, filt.bands + 1)
        z = torch.tensor(
            [t, *(math.cos(2 * math.pi * b * t) for b in bands), *(math.sin(2 * math.pi * b * t) for b in bands)],
            dtype=dtype,
        )
        z = torch.sin(filt.act_hidden.freq * (filt.hidden.weight @ z + filt.hidden.bias))
        z = torch.sin(filt.act_inner.freq * (filt.inner.weight @ z + filt.inner.bias))
        taps.append((filt.out.weight @ z) * torch.exp(-t * filt.decay_rates))
    return torch.stack(taps, dim=-1)


def _naive_response(block: OrchidBlock, v: Tensor) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of the conditioning network's frequency response: (B, D, L) -> 2 x (B, D, L + 1)."""
    cond = block.conditioner
    length, d = v.shape[-1], v.shape[-2]
    if isinstance(cond, PhaseFreeConditioner):
        real, imag = _naive_rfft(_naive_causal_depthwise(v, cond.time_conv.weight, None))
        power = (real * real + imag * imag) / length  # |X_k|^2 / L
        response = _naive_centred_conv(power, cond.freq_conv.weight, cond.freq_conv.bias, groups=d)
        return response, torch.zeros_like(response)
    if isinstance(cond, CrossCorrelationConditioner):
        k_re, k_im = _naive_rfft(_naive_causal_depthwise(v, cond.key_conv.weight, None))
        q_re, q_im = _naive_rfft(_naive_causal_depthwise(v, cond.query_conv.weight, None))
        cross_re = (k_re * q_re + k_im * q_im) / length  # conj(K) * Q = (kr - i ki)(qr + i qi)
        cross_im = (k_re * q_im - k_im * q_re) / length
        pairs = []
        for c in range(d):
            pairs += [cross_re[:, c], cross_im[:, c]]
        mixed = _naive_centred_conv(torch.stack(pairs, dim=1), cond.freq_conv.weight, cond.freq_conv.bias, groups=d)
        return mixed[:, 0::2], mixed[:, 1::2]
    raise ValueError(f"block.conditioner is {type(cond).__name__}; expected a conditioning network")


def naive_orchid_kernel(block: OrchidBlock, v: Tensor) -> Tensor:
    """The long-conv kernel h0 + (inverse DFT of H(v), lags 0..L-1): (B, D, L) -> (B, D, L), or (1, D, L)."""
    static = _naive_implicit_filter(block, v.shape[-1], v.dtype).unsqueeze(0)  # (1, D, L)
    if block.conditioner is None:
        return static
    return static + _naive_irfft_causal(*_naive_response(block, v))


def _naive_long_conv(x: Tensor, kernel: Tensor, skip: Tensor) -> Tensor:
    """y[t] = sum_{s<=t} kernel[t - s] * x[s] + skip * x[t], one output step at a time: (B, D, L) -> (B, D, L)."""
    steps = []
    for t in range(x.shape[-1]):
        past = x[..., : t + 1]  # (B, D, t + 1), s = 0..t
        lags = kernel[..., : t + 1].flip(-1)  # (B or 1, D, t + 1), lag t - s
        steps.append((lags * past).sum(-1) + skip * x[..., t])
    return torch.stack(steps, dim=-1)


def naive_orchid_block(block: OrchidBlock, x: Tensor) -> Tensor:
    """``OrchidBlock`` by direct sums, using ``block``'s parameters: (B, L, D) -> (B, L, D)."""
    d = x.shape[-1]
    z = F.linear(x, block.in_proj.weight, block.in_proj.bias).transpose(1, 2)  # (B, 3D, L)
    features = _naive_causal_depthwise(z, block.short_conv.weight, block.short_conv.bias)  # (B, 3D, L)
    x0, x1, v = features[:, :d], features[:, d : 2 * d], features[:, 2 * d :]
    kernel = naive_orchid_kernel(block, z[:, 2 * d :])  # conditioned on v before its short conv
    y = _naive_long_conv(v * x1, kernel, block.skip) * x0  # (B, D, L)
    return F.linear(y.transpose(1, 2), block.out_proj.weight, block.out_proj.bias)  # (B, L, D)


# --------------------------------------------------------------------------------------------------------------
# Mixture of experts (moe.py).

_SIGMA: dict[str, Callable[[Tensor], Tensor]] = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu}


def _softmax(values: list[Tensor]) -> list[Tensor]:
    """Softmax of a list of scalars, with the max subtracted for stability."""
    top = max(float(v.detach()) for v in values)
    exps = [torch.exp(v - top) for v in values]
    total = sum(exps[1:], exps[0])
    return [v / total for v in exps]


def naive_gate(head: MoEHead, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[int]]:
    """Gate of one input ``x (in_dim,)``.

    Returns:
        (logits at tau = 1, gate weights, balance-loss probabilities P, hard assignments), the first three as
        E scalars each; unselected ``topk`` experts get a weight of exactly 0.
    """
    cfg = head.config
    tau = head.tau.to(x.dtype)
    w, b = head.router.weight, head.router.bias
    e_range = range(cfg.experts)
    if cfg.gate == "topk":
        logits = [w[e] @ x + b[e] for e in e_range]
        chosen = sorted(e_range, key=lambda e: -float(logits[e].detach()))[: cfg.k]
        chosen_weights = _softmax([logits[e] for e in chosen])
        weights = [x.new_zeros(())] * cfg.experts
        for e, weight in zip(chosen, chosen_weights, strict=True):
            weights[e] = weight
        return logits, weights, _softmax(logits), chosen
    if cfg.gate == "dense_to_sparse":
        logits = [w[e] @ x + b[e] for e in e_range]
        weights = _softmax([logit / tau for logit in logits])
    else:
        sigma = _SIGMA[cfg.activation]
        squashed = [sigma(w[e] @ x) for e in e_range]
        logits = [squashed[e] + b[e] for e in e_range]
        weights = _softmax([squashed[e] / tau + b[e] for e in e_range])
    argmax = max(e_range, key=lambda e: float(weights[e].detach()))
    return logits, weights, weights, [argmax]


def naive_expert(head: MoEHead, e: int, x: Tensor) -> Tensor:
    """Expert ``e`` on one input: (in_dim,) -> (out_dim,)."""
    h = F.gelu(x @ head.w1[e] + head.b1[e])  # (hidden,)
    return h @ head.w2[e] + head.b2[e]


def naive_moe(head: MoEHead, x: Tensor) -> tuple[Tensor, Tensor]:
    """Mixture output and gate weights, input by input.

    Args:
        x: (*B, in_dim).

    Returns:
        out (*B, out_dim) and weights (*B, E). With ``topk`` only the K chosen experts are evaluated.
    """
    flat = x.reshape(-1, head.in_dim)  # (N, in_dim)
    outs, all_weights = [], []
    for i in range(flat.shape[0]):
        _, weights, _, assigned = naive_gate(head, flat[i])
        selected = assigned if head.config.gate == "topk" else range(head.config.experts)
        total = x.new_zeros(head.out_dim)
        for e in selected:
            total = total + weights[e] * naive_expert(head, e, flat[i])
        outs.append(total)
        all_weights.append(torch.stack(weights))
    out = torch.stack(outs).reshape(*x.shape[:-1], head.out_dim)  # (*B, out_dim)
    return out, torch.stack(all_weights).reshape(*x.shape[:-1], head.config.experts)  # (*B, E)


def naive_moe_losses(head: MoEHead, x: Tensor) -> tuple[Tensor, Tensor]:
    """(balance, z) losses from per-input loops: ``E * sum_i f_i P_i`` and ``mean(logsumexp(logits)^2)``."""
    flat = x.reshape(-1, head.in_dim)  # (N, in_dim)
    n, experts = flat.shape[0], head.config.experts
    counts = [0] * experts
    prob_sums = [x.new_zeros(())] * experts
    z_total = x.new_zeros(())
    for i in range(n):
        logits, _, probs, assigned = naive_gate(head, flat[i])
        for e in assigned:
            counts[e] += 1
        for e in range(experts):
            prob_sums[e] = prob_sums[e] + probs[e]
        top = max(float(v.detach()) for v in logits)
        lse = top + torch.log(sum((torch.exp(v - top) for v in logits), x.new_zeros(())))
        z_total = z_total + lse**2
    assignments = sum(counts)
    balance = experts * sum((counts[e] / assignments * prob_sums[e] / n for e in range(experts)), x.new_zeros(()))
    return balance, z_total / n
