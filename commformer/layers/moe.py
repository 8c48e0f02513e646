"""Mixture-of-experts head with three gates (Nguyen et al., arXiv 2309.13850 and 2401.13875).

``MoEHead`` maps ``x (*B, in_dim)`` to ``sum_e g_e(x) * expert_e(x)`` with E expert MLPs
(Linear -> GELU -> Linear) and one router ``Linear(in_dim, E)`` with weight W and bias b. Gates, per input::

    topk             g = softmax over the K largest of (W x + b); the other E - K weights are exactly 0
    dense_to_sparse  g = softmax((W x + b) / tau)
    activation       g = softmax(sigma(W x) / tau + b),   sigma in {sigmoid, tanh, gelu}

Placement of b in the activation gate (REFERENCE marks it unverified; the paper's abstract says only that a
linear layer's output goes through an activation before the softmax): b sits outside both sigma and tau, as
REFERENCE writes the formula. The remedy exists to break the interaction between tau and the router
parameters (``(W x + b) / tau`` is unchanged by scaling W, b and tau together); with b outside, neither W (behind
a non-homogeneous sigma) nor b (not divided by tau) can trade off against tau, and a bounded sigma cannot squash
the bias. The same ``router.bias`` parameter plays b in every gate, so checkpoints share one layout.
Consequence: b's share of the scores shrinks as tau falls, and in the limit tau -> 0 the routing is
``argmax sigma(W x)`` (bias-free; for a monotone sigma, cones through the origin). At the default tau_end = 0.1
b can still grow to compete with ``sigma / tau`` (sigmoid spans at most 10 there), but annealing this gate
much further towards 0 removes the bias from the routing.

Compute. Every expert runs as its own two matmuls on the rows routed to it (``_run_expert``). With ``topk``
each input's K (input, expert) assignments are sorted by expert and each expert runs once, on its own rows only
(experts with no rows are skipped): compute scales with K, not E. Outputs return to their slots through the
inverse permutation, a gather, rather than ``index_add`` (atomic, so run-to-run nondeterministic on GPU). The
dense gates (and ``topk`` with K == E) run every expert on all rows, through the same ``_run_expert``.
Alternatives measured with ``benchmarks/moe_speed.py`` (one CPU thread, 64 -> 64 -> 16, E = 8, forward +
backward): gathering each input's K expert weight matrices and running N K matrix-vector products was 4x
(256 rows) to 30x (3000 rows) slower and holds (N K, in, hidden) copies of the weights; one fused matmul over
all experts' stacked weights (``(N, in) @ (in, E*hidden)``) for the dense gates was within about 20% of the
per-expert loop either way (slightly slower at 3000 rows, slightly faster at 256), so the single shared path
is kept. On a GPU the fused form launches fewer kernels; re-measure there before switching.

Routing is a deterministic function of one input and tau: no noise, no capacity limit, nothing that depends on
the rest of the batch, so rollout-time and update-time log-probabilities agree (PPO). (Up to round-off: a BLAS
may sum a row's router product in a batch-size-dependent order, so an input within ~1e-7 of a top-K tie could
be routed differently in the two passes; dense gates are continuous in the logits.) The router (matmul,
softmax, losses) runs in at least float32, also under autocast (Switch Transformer practice); the experts follow
autocast. tau is a buffer, so checkpoints and the weight sync to EnvRunners carry it.

Auxiliary losses, over the N inputs of a forward call:

- balance (Switch / GShard): ``E * sum_i f_i * P_i``. f_i is the share of hard assignments that go to expert i
  (with ``topk``, each input's K chosen experts, so f sums to 1 and measures the compute load; with the dense
  gates, each input's argmax at the current tau, its top-1 choice were the gate made sparse). P_i is the mean router
  probability: the full softmax of the logits with ``topk`` (so every router row gets gradient), the gate itself
  with dense gates. f carries no gradient. Equals 1 for perfectly uniform routing.
- z (ST-MoE): ``mean(logsumexp(s)^2)`` of the gate's softmax input at tau = 1 (``W x + b``, or ``sigma(W x) + b``
  for the activation gate): it penalises what the parameters control, not the deliberate 1 / tau scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from commformer.config import MOE_GATES as GATES
from commformer.config import MoEActivationName as ActivationName
from commformer.config import MoEConfig
from commformer.config import MoEGateName as GateName
from commformer.validate import require_float, require_int

__all__ = ["GATES", "ActivationName", "GateName", "MoEConfig", "MoEHead", "MoEOutput", "Routing"]

# sigma of the activation gate: smooth and not positively homogeneous (sigma(c z) != c sigma(z)).
_ACTIVATIONS: dict[ActivationName, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


@dataclass(frozen=True)
class MoEOutput:
    """What ``MoEHead.forward`` returns. Losses are differentiable; ``usage`` and ``usage_entropy`` are not."""

    out: Tensor
    """(*B, out_dim) mixture of the experts' outputs."""
    weights: Tensor
    """(*B, E) gate weights of each input (rows sum to 1; exactly K non-zero with ``topk``)."""
    balance_loss: Tensor
    """() Switch/GShard balance loss ``E * sum_i f_i * P_i``."""
    z_loss: Tensor
    """() router z-loss ``mean(logsumexp(logits)^2)``."""
    aux_loss: Tensor
    """() ``balance_coeff * balance_loss + z_coeff * z_loss``, to add to the training loss."""
    usage: Tensor
    """(E,) share of the total gate weight each expert received (sums to 1), for logging."""
    usage_entropy: Tensor
    """() entropy of ``usage`` in nats; log(E) when usage is uniform, 0 when one expert takes everything."""


@dataclass(frozen=True)
class Routing:
    """Router results for N flattened inputs, all in the router dtype (at least float32)."""

    logits: Tensor
    """(N, E) the gate's softmax input at tau = 1 (what the z-loss sees)."""
    weights: Tensor
    """(N, E) gate weights, zero outside the chosen experts with ``topk``."""
    probs: Tensor
    """(N, E) router probabilities P for the balance loss."""
    assigned: Tensor
    """(N, K) hard assignments for the balance loss' f: the K chosen experts, or the argmax (K = 1)."""


def _expert_init(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), for a stacked weight or bias."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class MoEHead(nn.Module):
    """E expert MLPs mixed by a gate; see the module docstring for the gates and losses.

    Attributes:
        router: Linear(in_dim, E); its bias is b of every gate's formula.
        w1: (E, in_dim, hidden), b1: (E, hidden), w2: (E, hidden, out_dim), b2: (E, out_dim) stacked experts;
            expert e computes ``gelu(x @ w1[e] + b1[e]) @ w2[e] + b2[e]``.
        tau: () buffer, temperature of the dense gates (stored but unused by ``topk``).
    """

    tau: Tensor

    def __init__(self, in_dim: int, out_dim: int, config: MoEConfig) -> None:
        super().__init__()
        require_int("in_dim", in_dim, 1)
        require_int("out_dim", out_dim, 1)
        if not isinstance(config, MoEConfig):
            raise ValueError(f"config is a {type(config).__name__}; expected a MoEConfig")
        self.config = config
        self.in_dim, self.out_dim = in_dim, out_dim
        self.hidden = config.hidden if config.hidden is not None else in_dim
        e = config.experts
        self.router = nn.Linear(in_dim, e)
        self.w1 = _expert_init((e, in_dim, self.hidden), in_dim)
        self.b1 = _expert_init((e, self.hidden), in_dim)
        self.w2 = _expert_init((e, self.hidden, out_dim), self.hidden)
        self.b2 = _expert_init((e, out_dim), self.hidden)
        self.register_buffer("tau", torch.tensor(float(config.tau_start), dtype=torch.float32))

    @torch.no_grad()
    def set_tau(self, value: float) -> None:
        """Set the temperature of the dense gates in place (e.g. to ``config.tau_at(progress)``)."""
        tau = require_float("tau", value)
        if tau <= 0.0:
            raise ValueError(f"tau={value}; expected a number > 0")
        self.tau.fill_(tau)

    def route(self, x: Tensor) -> Routing:
        """Router logits, gate weights and balance-loss inputs for ``x (N, in_dim)``, in at least float32."""
        cfg = self.config
        dtype = torch.promote_types(torch.promote_types(x.dtype, self.router.weight.dtype), torch.float32)
        # Autocast off: a bf16 router flips near-tied top-k choices and loses softmax mass (Switch, sec. 2.4).
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(dtype)
            weight, bias = self.router.weight.to(dtype), self.router.bias.to(dtype)
            tau = self.tau.to(dtype)
            if cfg.gate == "topk":
                logits = F.linear(x, weight, bias)  # (N, E)
                top_logits, chosen = torch.topk(logits, cfg.k, dim=-1)  # (N, K) each
                # Unchosen experts get exactly 0 (scatter into zeros), not a small softmax value.
                weights = torch.zeros_like(logits).scatter(-1, chosen, torch.softmax(top_logits, dim=-1))
                return Routing(logits, weights, torch.softmax(logits, dim=-1), chosen)
            if cfg.gate == "dense_to_sparse":
                logits = F.linear(x, weight, bias)  # (N, E)
                weights = torch.softmax(logits / tau, dim=-1)
            elif cfg.gate == "activation":
                squashed = _ACTIVATIONS[cfg.activation](F.linear(x, weight))  # (N, E) sigma(W x)
                logits = squashed + bias
                weights = torch.softmax(squashed / tau + bias, dim=-1)
            else:  # unreachable: MoEConfig validates the name
                raise ValueError(f"model.moe.gate={cfg.gate!r}; expected one of {GATES}")
            return Routing(logits, weights, weights, weights.argmax(dim=-1, keepdim=True))

    def _run_expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on the rows routed to it: x (M, in_dim) -> (M, out_dim). Tests wrap this to count rows."""
        h = F.gelu(torch.addmm(self.b1[e], x, self.w1[e]))  # (M, hidden)
        return torch.addmm(self.b2[e], h, self.w2[e])

    def _mix_dense(self, x: Tensor, weights: Tensor) -> Tensor:
        """All experts on all rows, gate-weighted: x (N, in_dim), weights (N, E) -> (N, out_dim)."""
        outs = [self._run_expert(e, x) for e in range(self.config.experts)]  # E x (N, out_dim)
        stacked = torch.stack(outs, dim=1)  # (N, E, out_dim)
        return (stacked * weights.to(stacked.dtype).unsqueeze(-1)).sum(dim=1)

    def _mix_sparse(self, x: Tensor, weights: Tensor, chosen: Tensor) -> Tensor:
        """Only the chosen experts: x (N, in_dim), weights (N, E), chosen (N, K) -> (N, out_dim)."""
        n, k = chosen.shape
        expert_of_slot = chosen.reshape(-1)  # (N K,), slot s = input s // K, its (s % K)-th expert
        order = torch.argsort(expert_of_slot, stable=True)  # (N K,) slots grouped by expert
        rows = order // k  # (N K,) input row of each sorted slot
        counts = torch.bincount(expert_of_slot, minlength=self.config.experts).tolist()
        outs, start = [], 0
        for e, count in enumerate(counts):
            if count > 0:  # experts nobody chose are not run at all
                outs.append(self._run_expert(e, x[rows[start : start + count]]))  # (count, out_dim)
            start += count
        sorted_out = torch.cat(outs)  # (N K, out_dim), in sorted-slot order
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        per_slot = sorted_out[inverse].view(n, k, self.out_dim)  # (N, K, out_dim), slot order again
        slot_weights = weights.gather(-1, chosen).to(per_slot.dtype)  # (N, K)
        return (per_slot * slot_weights.unsqueeze(-1)).sum(dim=1)

    def forward(self, x: Tensor) -> MoEOutput:
        """Mix the experts for every input.

        Args:
            x: (*B, in_dim), any number of leading batch dims (also none).

        Returns:
            ``MoEOutput`` with ``out (*B, out_dim)``, ``weights (*B, E)``, scalar losses over all inputs and
            ``usage (E,)``.
        """
        if x.shape[-1:] != (self.in_dim,):
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (*B, {self.in_dim})")
        batch = x.shape[:-1]
        flat = x.reshape(-1, self.in_dim)  # (N, in_dim)
        if flat.shape[0] == 0:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected at least one input (losses average over them)")
        routing = self.route(flat)
        if self.config.gate == "topk" and self.config.k < self.config.experts:
            out = self._mix_sparse(flat, routing.weights, routing.assigned)
        else:
            out = self._mix_dense(flat, routing.weights)
        balance, z = self._aux_losses(routing)
        usage = routing.weights.detach().mean(dim=0)  # (E,)
        usage_entropy = -(usage * torch.log(usage.clamp_min(torch.finfo(usage.dtype).tiny))).sum()
        cfg = self.config
        return MoEOutput(
            out=out.reshape(*batch, self.out_dim),  # (*B, out_dim)
            weights=routing.weights.reshape(*batch, cfg.experts),  # (*B, E)
            balance_loss=balance,
            z_loss=z,
            aux_loss=cfg.balance_coeff * balance + cfg.z_coeff * z,
            usage=usage,
            usage_entropy=usage_entropy,
        )

    def _aux_losses(self, routing: Routing) -> tuple[Tensor, Tensor]:
        """(balance, z) losses; see the module docstring."""
        e = self.config.experts
        counts = torch.bincount(routing.assigned.reshape(-1), minlength=e).to(routing.probs.dtype)  # (E,)
        f = counts / routing.assigned.numel()
        balance = e * (f * routing.probs.mean(dim=0)).sum()
        z = torch.logsumexp(routing.logits, dim=-1).square().mean()
        return balance, z
