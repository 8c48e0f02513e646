"""The learnable communication graph of CommFormer (Hu et al., ICLR 2024, arXiv 2405.08550, section 4).

One dense matrix of logits ``L`` (N, N), not input-dependent: row i holds receiver i's preference over
senders j. Each receiver keeps exactly ``k`` senders among the *other* agents (top-k of row i without the
diagonal) plus its own self-loop, which is always on.

Straight-through estimator::

    A = y_hard + (y_soft - y_soft.detach())
    y_hard[i, j] = 1 if j == i or j in topk_{j != i} L[i, j] else 0       (deterministic)
    y_soft[i, :] = softmax_{j != i}((L[i, :] + g[i, :]) / tau),  g = Gumbel noise if gumbel else 0

The forward value of ``A`` is exactly the 0/1 matrix ``y_hard`` (``x - x`` is exactly 0 in floating point),
and its gradient is that of ``y_soft``. Gumbel noise only perturbs the surrogate gradient, never the graph
itself: this is the PPO consistency rule of docs/DESIGN.md (rollout and update see the same
graph). The official code instead draws the update-time graph from the noisy logits, which biases the PPO
ratio; we do not copy that.

With N = 2 each receiver has one candidate sender, so the surrogate is constant and the logits get a zero
gradient: there is nothing to choose. With N = 1 the graph is ``[[1]]`` and the logits get no gradient.

Ties. The logits start all equal (ones, as in the official code), so top-k needs a tie-breaker. Ties are
broken exactly, not by adding a tiny constant (1e-6 * j / N is below float32 resolution around 1.0 for
large N): receiver i ranks candidate senders in cyclic order i+1, i+2, ..., i-1 (mod N) and a stable sort
keeps that order among equal logits. The initial graph is therefore the ring "i listens to i+1..i+k", in
which every agent also *sends* to exactly k receivers, instead of every receiver listening to agents 0..k-1.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from commformer.config import GraphConfig

__all__ = ["CommGraph", "cyclic_candidates", "hard_topk", "sample_gumbel", "straight_through_topk"]


def cyclic_candidates(n_agents: int, device: torch.device | None = None) -> Tensor:
    """Candidate senders of each receiver in tie-break order: ``out[i, m] = (i + 1 + m) % N``.

    Returns a long tensor (N, N - 1); row i lists every agent but i, nearest-after-i first.
    """
    rows = torch.arange(n_agents, device=device).unsqueeze(1)  # (N, 1)
    offsets = torch.arange(1, n_agents, device=device).unsqueeze(0)  # (1, N - 1)
    return (rows + offsets) % n_agents  # (N, N - 1)


def sample_gumbel(
    shape: torch.Size | tuple[int, ...],
    *,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard Gumbel noise ``-log(E)``, ``E ~ Exponential(1)``, of the given shape."""
    # -log(Exp(1)) is Gumbel(0, 1) and, unlike -log(-log(U)), never takes log(0).
    exp = torch.empty(shape, dtype=dtype, device=device).exponential_(generator=generator)
    return -exp.log()


def hard_topk(logits: Tensor, k: int) -> Tensor:
    """Deterministic 0/1 adjacency: self-loops plus the top-``k`` other senders of each row.

    Args:
        logits: (N, N) receiver-by-sender scores; the diagonal is ignored.
        k: senders per receiver, ``0 <= k <= N - 1``.

    Returns:
        (N, N) tensor of the logits' dtype with exactly ``k + 1`` ones per row (ties broken by cyclic order).
    """
    n = logits.shape[-1]
    eye = torch.eye(n, dtype=logits.dtype, device=logits.device)
    if k == 0:
        return eye
    candidates = cyclic_candidates(n, logits.device)  # (N, N - 1)
    ranked = logits.detach().gather(1, candidates)  # (N, N - 1), in tie-break order
    # A stable descending sort keeps the cyclic order among equal logits: the exact tie-breaker.
    order = torch.sort(ranked, dim=1, descending=True, stable=True).indices[:, :k]  # (N, k)
    senders = candidates.gather(1, order)  # (N, k) agent indices
    return eye.scatter(1, senders, 1.0)


def straight_through_topk(logits: Tensor, k: int, tau: float, noise: Tensor | None = None) -> Tensor:
    """Straight-through top-k adjacency (see the module docstring).

    Args:
        logits: (N, N) graph logits.
        k: senders per receiver besides itself, ``0 <= k <= N - 1``.
        tau: softmax temperature of the surrogate, > 0.
        noise: optional (N, N) noise added to the logits in the surrogate only.

    Returns:
        (N, N) adjacency whose forward value is exactly 0/1 (``hard_topk(logits, k)``) and whose gradient
        with respect to ``logits`` is that of ``softmax_{j != i}((logits + noise) / tau)``.
    """
    n = logits.shape[-1]
    y_hard = hard_topk(logits, k)  # (N, N)
    if n == 1:
        # A lone agent only has its self-loop: nothing to relax, no gradient to the logits.
        return y_hard
    perturbed = logits if noise is None else logits + noise
    off_diag = ~torch.eye(n, dtype=torch.bool, device=logits.device)
    # Receivers choose among the other agents only; the self-loop is fixed, so it has no surrogate either.
    masked = (perturbed / tau).masked_fill(~off_diag, float("-inf"))  # (N, N)
    y_soft = torch.softmax(masked, dim=-1)  # (N, N), zero diagonal
    # Adding (y_soft - y_soft.detach()), exactly 0 forward, keeps the forward value exactly y_hard while
    # `y_hard - y_soft.detach() + y_soft` could round a kept 1 to 1 - eps.
    return y_hard + (y_soft - y_soft.detach())


class CommGraph(nn.Module):
    """Learnable receiver-by-sender communication graph with a straight-through top-k relaxation.

    Attributes:
        logits: (N, N) parameter, initialised to ones as in the official code (or standard normal with
            ``model.graph.init=random``); the upper level of the bi-level optimisation.
        k: senders per receiver besides itself (``config.senders(N)``).
    """

    def __init__(self, n_agents: int, config: GraphConfig) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.k = config.senders(n_agents)  # validates n_agents and an explicit k
        self.tau = float(config.gumbel_tau)
        # "random" draws from torch's global generator, which the run's seed sets: a seeded random graph.
        initial = torch.randn(n_agents, n_agents) if config.init == "random" else torch.ones(n_agents, n_agents)
        self.logits = nn.Parameter(initial)

    def forward(self, gumbel: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Straight-through adjacency (N, N): exactly the hard 0/1 graph forward, softmax gradient.

        Args:
            gumbel: add Gumbel noise to the surrogate softmax (upper-level exploration). The forward value
                is unchanged: only the gradient differs.
            generator: optional RNG for the noise.

        Returns:
            (N, N) tensor; row i is receiver i, column j is sender j; diagonal is 1.
        """
        noise = None
        if gumbel and self.n_agents > 1:
            noise = sample_gumbel(
                self.logits.shape, dtype=self.logits.dtype, device=self.logits.device, generator=generator
            )
        return straight_through_topk(self.logits, self.k, self.tau, noise)

    @torch.no_grad()
    def hard(self) -> Tensor:
        """The hard 0/1 graph (N, N), without autograd (for logging heatmaps)."""
        return hard_topk(self.logits, self.k)

    @torch.no_grad()
    def probs(self) -> Tensor:
        """Surrogate sender probabilities ``softmax_{j != i}(logits / tau)`` (N, N), zero diagonal.

        For logging; a single agent gives ``[[0]]`` (it has no senders).
        """
        n = self.n_agents
        if n == 1:
            return torch.zeros_like(self.logits)
        self_loop = torch.eye(n, dtype=torch.bool, device=self.logits.device)
        return torch.softmax((self.logits / self.tau).masked_fill(self_loop, float("-inf")), dim=-1)

    def extra_repr(self) -> str:
        return f"n_agents={self.n_agents}, k={self.k}, tau={self.tau}"
