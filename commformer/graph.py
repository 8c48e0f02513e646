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

Which entries learn. Attention (commformer/layers/attention.py, ``masked_weights``) gives every entry of ``A`` a
gradient, a sender the receiver does not hear included: the slope of the loss as a little of that sender's message
is mixed in. Through ``y_soft`` a receiver's logits then rise for the senders worth hearing, heard or not, instead of
only falling for a useless held one. The gathered layout scores the listed senders only; there each learner forward
draws ``model.graph.probes`` senders left out per receiver (``probe_senders``) whose entries are exactly 0 and carry
the surrogate's gradient scaled by (senders left out) / P, so the logits get the dense layout's gradient in
expectation, at P more scored pairs per receiver instead of N.

With N = 2 each receiver has one candidate sender, so the surrogate is constant and the logits get a zero
gradient: there is nothing to choose. With N = 1 the graph is ``[[1]]`` and the logits get no gradient.

Ties. The logits start all equal (ones, as in the official code), so top-k needs a tie-breaker. Ties are
broken exactly, not by adding a tiny constant (1e-6 * j / N is below float32 resolution around 1.0 for
large N): receiver i ranks candidate senders in cyclic order i+1, i+2, ..., i-1 (mod N) and, among equal logits,
keeps the nearest in that order (``topk_senders``). The initial graph is therefore the ring "i listens to i+1..i+k", in
which every agent also *sends* to exactly k receivers, instead of every receiver listening to agents 0..k-1.

Layouts. ``forward`` gives the (N, N) matrix; ``senders`` gives what the attention reads, which for a large team with
a sparse graph is the gathered layout (commformer/layers/attention.py): each receiver's self-loop and k senders,
(N, k + 1) entries, which are exactly the nonzero entries of the matrix with the same gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from commformer.config import GraphConfig
from commformer.layers.attention import Senders, gathers
from commformer.validate import ConfigError

__all__ = [
    "CommGraph",
    "hard_topk",
    "probe_senders",
    "sample_gumbel",
    "straight_through_senders",
    "straight_through_topk",
    "team_senders",
    "topk_senders",
]


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


def topk_senders(logits: Tensor, k: int) -> Tensor:
    """Each receiver's top-``k`` senders among the other agents, ties broken by cyclic order (module docstring).

    Args:
        logits: (N, N) receiver-by-sender scores; the diagonal is ignored.
        k: senders per receiver, ``0 <= k <= N - 1``.

    Returns:
        (N, k) int64, row i the senders receiver i keeps, ascending.

    Without a sort of every row (O(N^2 log N) per forward, 1 s at N = 4,096 on one CPU thread): a first top-k gives
    each row's k-th largest logit v; every sender above v is kept (fewer than k of them), and the rest are taken
    among the senders equal to v, nearest after i first. A second top-k does both at once on a rank key that has
    no ties where it cuts: 0 above v, the cyclic distance ``(j - i) % N`` (1..N-1, all distinct) at v, N below.
    """
    n = logits.shape[-1]
    device = logits.device
    if k == 0:
        return torch.empty(n, 0, dtype=torch.long, device=device)
    own = torch.eye(n, dtype=torch.bool, device=device)
    candidates = logits.detach().masked_fill(own, float("-inf"))  # (N, N), the receiver is not its own sender
    kth = candidates.topk(k, dim=1).values[:, -1:]  # (N, 1), a value: the same whatever order topk breaks ties in
    agents = torch.arange(n, dtype=torch.int32, device=device)
    distance = (agents.unsqueeze(0) - agents.unsqueeze(1)) % n  # (N, N), [i, j] = (j - i) mod N
    key = torch.where(candidates == kth, distance, n).masked_fill(candidates > kth, 0).masked_fill(own, n)
    # float32 holds every key exactly up to 2^24 agents, and a float top-k runs on every device.
    chosen = key.to(torch.float32).topk(k, dim=1, largest=False).indices  # (N, k), the k smallest keys
    # The set is unique, not topk's order among the zeros: sorting makes the index itself deterministic.
    return chosen.sort(dim=1).values


def hard_topk(logits: Tensor, k: int, held: Tensor | None = None) -> Tensor:
    """Deterministic 0/1 adjacency: self-loops plus the top-``k`` other senders of each row.

    Args:
        logits: (N, N) receiver-by-sender scores; the diagonal is ignored.
        k: senders per receiver, ``0 <= k <= N - 1``.
        held: optional (N, k) senders each receiver keeps instead of its top k (``CommGraph.settle``).

    Returns:
        (N, N) tensor of the logits' dtype with exactly ``k + 1`` ones per row (ties broken by cyclic order).
    """
    n = logits.shape[-1]
    eye = torch.eye(n, dtype=logits.dtype, device=logits.device)
    if k == 0:
        return eye
    return eye.scatter(1, topk_senders(logits, k) if held is None else held, 1.0)


def straight_through_topk(
    logits: Tensor,
    k: int,
    tau: float,
    noise: Tensor | None = None,
    candidates: bool = True,
    held: Tensor | None = None,
) -> Tensor:
    """Straight-through top-k adjacency (see the module docstring).

    Args:
        logits: (N, N) graph logits.
        k: senders per receiver besides itself, ``0 <= k <= N - 1``.
        tau: softmax temperature of the surrogate, > 0.
        noise: optional (N, N) noise added to the logits in the surrogate only.
        candidates: whether the entries left out carry the surrogate's gradient too (attention assesses them,
            commformer/layers/attention.py ``masked_weights``), or only the kept ones (what the gathered layout can
            give, ``straight_through_senders``).
        held: optional (N, k) senders kept instead of the top k (``CommGraph.settle``).

    Returns:
        (N, N) adjacency whose forward value is exactly 0/1 (``hard_topk(logits, k, held)``) and whose gradient
        with respect to ``logits`` is that of ``softmax_{j != i}((logits + noise) / tau)`` (on the kept entries only
        without ``candidates``).
    """
    n = logits.shape[-1]
    y_hard = hard_topk(logits, k, held)  # (N, N)
    if n == 1:
        # A lone agent only has its self-loop: nothing to relax, no gradient to the logits.
        return y_hard
    relaxed = _surrogate(logits, tau, noise)  # (N, N)
    relaxed = relaxed - relaxed.detach()  # exactly 0 forward, the surrogate's gradient
    # Adding a term that is exactly 0 keeps the forward value exactly y_hard while `y_hard - y_soft.detach() + y_soft`
    # could round a kept 1 to 1 - eps.
    return y_hard + (relaxed if candidates else relaxed * y_hard)


def probe_senders(kept: Tensor, probes: int, generator: torch.Generator | None = None) -> Tensor:
    """``probes`` senders per receiver drawn uniformly without replacement among those it does not hear.

    Args:
        kept: (N, K) each receiver's listed senders, its self-loop included.
        probes: P, at most N - K.
        generator: optional RNG.

    Returns:
        (N, P) int64, ascending per row.
    """
    n = kept.shape[0]
    draws = torch.rand(n, n, generator=generator, device=kept.device)  # (N, N)
    draws = draws.scatter(1, kept, -1.0)  # a listed sender (the receiver included) is never drawn
    return draws.topk(probes, dim=1).indices.sort(dim=1).values


def straight_through_senders(
    logits: Tensor, k: int, tau: float, noise: Tensor | None = None, held: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``straight_through_topk`` in the gathered layout (commformer/layers/attention.py): its kept entries only.

    Args:
        logits, k, tau, noise, held: as ``straight_through_topk``.

    Returns:
        ``index`` (N, k + 1) int64, row i = receiver i's self-loop, then its top-k senders ascending; and ``entries``
        (N, k + 1), ``straight_through_topk(...)[i, index[i, m]]``: exactly 1 forward, with the same gradient. Every
        entry not listed is exactly 0 forward and has no gradient here (``straight_through_topk`` with
        ``candidates=False``); ``CommGraph.senders`` adds sampled probes.

    The surrogate softmax is O(N^2) (every logit is a candidate), once per call, not per batch element; without
    autograd (acting) it is skipped, since it is exactly 0 forward.
    """
    n = logits.shape[-1]
    kept = topk_senders(logits, k) if held is None else held  # (N, k)
    index = torch.cat([torch.arange(n, device=logits.device).unsqueeze(-1), kept], dim=1)
    ones = logits.new_ones(n, k + 1)
    if n == 1 or not (torch.is_grad_enabled() and logits.requires_grad):
        return index, ones
    relaxed = _surrogate(logits, tau, noise).gather(1, index)  # (N, k + 1)
    return index, ones + (relaxed - relaxed.detach())


def _surrogate(logits: Tensor, tau: float, noise: Tensor | None) -> Tensor:
    """``softmax_{j != i}((logits + noise) / tau)`` (N, N), zero diagonal; N >= 2."""
    n = logits.shape[-1]
    perturbed = logits if noise is None else logits + noise
    # Receivers choose among the other agents only; the self-loop is fixed, so it has no surrogate either.
    own = torch.eye(n, dtype=torch.bool, device=logits.device)
    return torch.softmax((perturbed / tau).masked_fill(own, float("-inf")), dim=-1)


def team_senders(n_agents: int, config: GraphConfig) -> int:
    """``config.senders(n_agents)``, the senders each receiver keeps, after checking that the graph's settings fit a
    team of ``n_agents`` (``ConfigError`` naming the key otherwise): a warm-up needs the dense layout."""
    k = config.senders(n_agents)
    if config.warmup_fraction > 0.0 and gathers(n_agents, k):
        raise ConfigError(
            f"model.graph.warmup_fraction={config.warmup_fraction} needs the dense layout, but a team of {n_agents} "
            f"with k={k} senders is gathered (N >= 16 (k + 1)); expected model.graph.warmup_fraction=0 or a larger k"
        )
    return k


class CommGraph(nn.Module):
    """Learnable receiver-by-sender communication graph with a straight-through top-k relaxation.

    Attributes:
        logits: (N, N) parameter, initialised to ones as in the official code (or standard normal with
            ``model.graph.init=random``); the upper level of the bi-level optimisation.
        k: senders per receiver besides itself (``config.senders(N)``).
        gathered: whether attention reads this graph in the gathered layout (``gathers(N, k)``, fixed with N and k).
    """

    def __init__(self, n_agents: int, config: GraphConfig) -> None:
        super().__init__()
        self.n_agents = n_agents
        self.k = team_senders(n_agents, config)  # validates n_agents, an explicit k and the warm-up
        self.tau = float(config.gumbel_tau)
        self.gathered = gathers(n_agents, self.k)
        # Whether every sender left out gets a gradient of its own (the dense layout); the gathered layout scores a
        # sample of `probes` of them per learner forward.
        self.candidates = not self.gathered
        self.probes = min(config.probes, n_agents - 1 - self.k) if self.gathered else 0
        self.held_product = bool(config.held_product)
        # "random" draws from torch's global generator, which the run's seed sets: a seeded random graph.
        initial = torch.randn(n_agents, n_agents) if config.init == "random" else torch.ones(n_agents, n_agents)
        self.logits = nn.Parameter(initial)
        self.margin = float(config.switch_margin)
        self.held: Tensor | None
        if self.margin > 0.0:
            # The senders each receiver hears (N, k): state, saved and sent with the weights, that only `settle` moves.
            self.register_buffer("held", topk_senders(initial, self.k))
        else:
            self.held = None  # the plain top-k of the logits
        self.hear_all: Tensor | None
        if config.warmup_fraction > 0.0:  # `config.senders` refused a warm-up where attention gathers
            # Whether every receiver hears every sender (the warm-up): state the learner clears (`end_warmup`), sent
            # to the EnvRunners with the weights.
            self.register_buffer("hear_all", torch.tensor(True))
        else:
            self.hear_all = None

    def forward(self, gumbel: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Straight-through adjacency (N, N): exactly the hard 0/1 graph forward, softmax gradient.

        Args:
            gumbel: add Gumbel noise to the surrogate softmax (upper-level exploration). The forward value
                is unchanged: only the gradient differs.
            generator: optional RNG for the noise.

        Returns:
            (N, N) tensor; row i is receiver i, column j is sender j; diagonal is 1.
        """
        noise = self._noise(gumbel, generator)
        k, held = self._kept()
        return straight_through_topk(self.logits, k, self.tau, noise, self.candidates, held)

    def senders(self, gumbel: bool = False, generator: torch.Generator | None = None, probes: bool = True) -> Senders:
        """The straight-through adjacency in the layout attention reads (``gathered``): ``forward``'s (N, N) matrix,
        or its self-loops and top-k senders, (N, k + 1) entries (``straight_through_senders``), then, with autograd
        and ``probes``, ``Senders.probes``: a fresh sample of senders left out to assess (module docstring). Same
        arguments; ``probes=False`` where the graph's gradient is not used (the learner's lower-level steps)."""
        if not self.gathered:
            return Senders(None, self(gumbel, generator), held_product=self.held_product)
        noise = self._noise(gumbel, generator)
        index, entries = straight_through_senders(self.logits, self.k, self.tau, noise, self.held)
        if not (probes and self.probes and torch.is_grad_enabled() and self.logits.requires_grad):
            return Senders(index, entries, held_product=self.held_product)
        # Senders left out, a sample of them per forward: entries exactly 0, the surrogate's gradient scaled by
        # (left out) / P, so that in expectation the logits get the dense layout's gradient.
        assessed = probe_senders(index, self.probes, generator)  # (N, P)
        relaxed = _surrogate(self.logits, self.tau, noise).gather(1, assessed)  # (N, P)
        scale = (self.n_agents - 1 - self.k) / self.probes
        probed = Senders(assessed, (relaxed - relaxed.detach()) * scale)
        return Senders(index, entries, probed, self.held_product)

    @property
    def hears_all(self) -> bool:
        """Whether the graph is in its warm-up (``model.graph.warmup_fraction``): every receiver hears every sender."""
        return self.hear_all is not None and bool(self.hear_all)

    def end_warmup(self) -> None:
        """End the warm-up: from now on each receiver hears its top-k senders."""
        if self.hear_all is not None:
            self.hear_all.fill_(False)

    def _kept(self) -> tuple[int, Tensor | None]:
        """The senders per receiver and the held ones that ``straight_through_topk`` keeps now: all of them in the
        warm-up, else k (and the held senders, with a switch margin)."""
        if self.hears_all:
            return self.n_agents - 1, None
        return self.k, self.held

    def _noise(self, gumbel: bool, generator: torch.Generator | None) -> Tensor | None:
        """Gumbel noise (N, N) for the surrogate, or None."""
        if not gumbel or self.n_agents == 1:
            return None
        return sample_gumbel(self.logits.shape, dtype=self.logits.dtype, device=self.logits.device, generator=generator)

    @torch.no_grad()
    def hard(self) -> Tensor:
        """The hard 0/1 graph (N, N) receivers hear now, without autograd (for logging heatmaps)."""
        return hard_topk(self.logits, *self._kept())

    @torch.no_grad()
    def settle(self) -> int:
        """After the logits moved (an upper-level step): each receiver replaces the sender it holds with the lowest
        logit by the best sender it does not hear while that one's logit is higher by more than ``margin``
        (``model.graph.switch_margin``). Returns the number of replacements; nothing to do without a margin."""
        if self.held is None or self.k == 0:
            return 0
        n = self.n_agents
        logits = self.logits.detach()
        held = self.held.clone()  # (N, k)
        rows = torch.arange(n, device=held.device)
        own = torch.eye(n, dtype=torch.bool, device=held.device)
        swaps = 0
        for _ in range(self.k):  # one replacement per receiver and pass; k passes can replace every sender
            heard = own.scatter(1, held, True)  # (N, N)
            worst, position = logits.gather(1, held).min(dim=1)  # (N,)
            best, sender = logits.masked_fill(heard, -torch.inf).max(dim=1)  # (N,)
            better = best > worst + self.margin
            if not bool(better.any()):
                break
            held[rows[better], position[better]] = sender[better]
            swaps += int(better.sum())
        self.held.copy_(held.sort(dim=1).values)
        return swaps

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
        layout = (
            f"gathered={self.gathered}, candidates={self.candidates}, probes={self.probes}, margin={self.margin}, "
            f"held_product={self.held_product}"
        )
        return f"n_agents={self.n_agents}, k={self.k}, tau={self.tau}, {layout}"
