"""Typed configs of the model parts.

Each dataclass is frozen and validates itself in ``__post_init__``; errors name the setting by its dotted
path in the experiment config (``model.graph.sparsity``) and say what was expected, so a bad YAML value or
CLI override fails before any model or Ray process is built. Field names are the YAML/CLI names.

To add a model part: add a frozen dataclass with its own ``__post_init__`` and a field on ``ModelConfig``
with ``field(default_factory=...)``; ``ModelConfig.__post_init__`` checks that nested parts have the right
type.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from commformer.early_exit import EarlyExitConfig
from commformer.layers.moe import MoEConfig
from commformer.layers.orchid import OrchidConfig
from commformer.validate import require_bool, require_choice, require_float, require_int

__all__ = [
    "ENCODERS",
    "HEADS",
    "EarlyExitConfig",
    "EncoderName",
    "GateConfig",
    "GraphConfig",
    "HeadName",
    "ModelConfig",
]

HeadName = Literal["linear", "moe"]
HEADS: tuple[str, ...] = get_args(HeadName)
ActivationName = Literal["gelu", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = get_args(ActivationName)

GraphInit = Literal["uniform", "random"]
GRAPH_INITS: tuple[str, ...] = get_args(GraphInit)

EncoderName = Literal["mlp", "orchid", "attention"]
ENCODERS: tuple[str, ...] = get_args(EncoderName)

_ORCHID_DEFAULT_MAX_LEN = OrchidConfig().max_len


@dataclass(frozen=True)
class GraphConfig:
    """The learnable communication graph (CommFormer, Hu et al. 2024, section 4.1)."""

    sparsity: float = 0.4
    """Fraction of the agents each receiver listens to, in (0, 1]; ignored when ``k`` is given."""
    k: int | None = None
    """Exact number of senders per receiver (excluding itself); overrides ``sparsity``."""
    gumbel: bool = True
    """Add Gumbel noise to the softmax surrogate whose gradient the upper-level (graph) steps take; the graph itself
    (the hard top-k) never changes. It lets the graph search among the edges it does not hold (docs/DESIGN.md, "The
    graph", has the measurement at N = 6)."""
    gumbel_tau: float = 1.0
    """Temperature of the softmax whose gradient the straight-through graph uses."""
    init: GraphInit = "uniform"
    """Initial logits: ``uniform`` (all ones, as the official code; ties make the first graph the ring
    i <- i+1..i+k) or ``random`` (standard normal draws from the run's seed: a random graph of k senders; with
    ``training.graph_freeze_fraction=0`` it is the fixed random graph of the communication benchmark)."""

    def __post_init__(self) -> None:
        sparsity = require_float("model.graph.sparsity", self.sparsity)
        if not 0.0 < sparsity <= 1.0:
            raise ValueError(f"model.graph.sparsity={self.sparsity}; expected a number in (0, 1]")
        if self.k is not None:
            require_int("model.graph.k", self.k, 1)
        require_bool("model.graph.gumbel", self.gumbel)
        require_choice("model.graph.init", self.init, GRAPH_INITS)
        tau = require_float("model.graph.gumbel_tau", self.gumbel_tau)
        if tau <= 0.0:
            raise ValueError(f"model.graph.gumbel_tau={self.gumbel_tau}; expected a number > 0")

    def senders(self, n_agents: int) -> int:
        """Number of senders each receiver keeps (self-loop not counted) in a team of ``n_agents``.

        ``k`` if given, else ``max(1, round(sparsity * n_agents))`` capped at ``n_agents - 1``; 0 for a
        single agent. Rounding is half-up (0.5 * 5 -> 3), not Python's half-to-even ``round``, so that
        "a fraction of the team" reads the way people compute it by hand.
        The official code uses ``int(N * sparsity)`` (floor); with the default 0.4 both agree for
        N = 3, 8, 10, 25 (k = 1, 3, 4, 10).
        """
        require_int("n_agents", n_agents, 1)
        if self.k is not None:
            if self.k > n_agents - 1:
                expected = (
                    "expected model.graph.k=None (a single agent has no one to listen to)"
                    if n_agents == 1
                    else f"expected 1 <= k <= {n_agents - 1}"
                )
                raise ValueError(f"model.graph.k={self.k} but the environment has N={n_agents} agents; {expected}")
            return self.k
        if n_agents == 1:
            return 0
        k = max(1, math.floor(self.sparsity * n_agents + 0.5))
        return min(k, n_agents - 1)


@dataclass(frozen=True)
class GateConfig:
    """Temporal gates: each agent decides per step whether to receive messages (CommFormer extension)."""

    enabled: bool = True
    """Learn the gates; when false every gate is always open and the cost term is 0."""
    cost_weight: float = 0.01
    """Weight of the communication cost ``mean(p_open over alive agents)`` added to the loss."""
    init_bias: float = 2.0
    """Initial bias of the gate logit; sigmoid(2) = 0.88, so gates start open."""

    def __post_init__(self) -> None:
        require_bool("model.gates.enabled", self.enabled)
        cost = require_float("model.gates.cost_weight", self.cost_weight)
        if cost < 0.0:
            raise ValueError(f"model.gates.cost_weight={self.cost_weight}; expected a number >= 0")
        require_float("model.gates.init_bias", self.init_bias)


@dataclass(frozen=True)
class ModelConfig:
    """The CommFormer policy: embedding, graph, gates, attention blocks, heads."""

    embed_dim: int = 64
    """Width of the per-agent embedding (CommFormer uses 64)."""
    num_heads: int = 1
    """Attention heads; must divide ``embed_dim``."""
    num_blocks: int = 1
    """Number of graph-attention blocks."""
    mlp_ratio: int = 2
    """Hidden width of each block's MLP, as a multiple of ``embed_dim``."""
    activation: ActivationName = "gelu"
    """Nonlinearity of the policy's own MLPs (observation and state embeddings, block MLPs, policy and value
    heads, early-exit heads): ``gelu``, ``relu`` or ``silu``. The MoE experts keep GELU."""
    agent_embedding: bool = True
    """Add a learned per-agent-index embedding (breaks permutation equivariance on purpose)."""
    use_state: bool = True
    """Let the value heads read the global state when the environment provides one."""
    communicate: bool = True
    """False: the no-communication ablation (every agent attends only to itself; graph and gates unused)."""
    graph: GraphConfig = field(default_factory=GraphConfig)
    """The communication graph."""
    gates: GateConfig = field(default_factory=GateConfig)
    """The temporal gates."""
    head: HeadName = "linear"
    """Policy head: ``linear`` (Linear, activation, Linear, shared by the agents) or ``moe`` (mixture of experts)."""
    value_head: HeadName = "linear"
    """Value head: ``linear`` or ``moe`` (same experts/gate settings as ``moe``, its own parameters)."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """Mixture-of-experts settings, used by whichever head is ``moe``."""
    encoder: EncoderName = "mlp"
    """Per-agent encoder before communication: ``mlp`` embeds the current observation only; ``orchid`` (an Orchid
    block) and ``attention`` (causal softmax attention, the baseline) encode the agent's last ``history``
    observations over time and keep the last position (commformer/history.py)."""
    history: int = 1
    """L, the steps each agent's action is computed from (the current one included). The team env supplies them
    as ``obs["history"]`` (L, N, D), derived from this setting; must be 1 with ``encoder=mlp``."""
    orchid: OrchidConfig = field(default_factory=OrchidConfig)
    """The Orchid block of ``encoder=orchid``. Its ``max_len`` is set from ``history``: leave it out."""
    early_exit: EarlyExitConfig = field(default_factory=EarlyExitConfig)
    """JEI-DNN early exits: a head and a gate after the encoder and each block but the last
    (commformer/early_exit.py)."""

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_heads", "num_blocks", "mlp_ratio"):
            require_int(f"model.{name}", getattr(self, name), 1)
        if self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}; "
                "expected embed_dim to be a multiple of num_heads"
            )
        require_bool("model.agent_embedding", self.agent_embedding)
        require_bool("model.use_state", self.use_state)
        require_bool("model.communicate", self.communicate)
        require_choice("model.activation", self.activation, ACTIVATIONS)
        require_choice("model.head", self.head, HEADS)
        require_choice("model.value_head", self.value_head, HEADS)
        parts: dict[str, type] = {
            "graph": GraphConfig,
            "gates": GateConfig,
            "moe": MoEConfig,
            "orchid": OrchidConfig,
            "early_exit": EarlyExitConfig,
        }
        for name, cls in parts.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise ValueError(
                    f"model.{name} is a {type(value).__name__}; expected a {cls.__name__} "
                    "(build nested parts as dataclasses, not dicts)"
                )
        self._check_history()

    def _check_history(self) -> None:
        """Validates ``encoder`` and ``history`` and derives ``orchid.max_len = history``.

        A window with ``mlp`` is refused rather than ignored: the saved config would claim L steps while the
        policy reads one, and the env would still build and store the unused window. ``orchid.max_len`` (the
        block's longest input, and the scale of its positional features) is the window length by construction;
        an explicit value other than ``history`` would be a second, contradicting source of the same fact.
        """
        require_choice("model.encoder", self.encoder, ENCODERS)
        require_int("model.history", self.history, 1)
        if self.encoder == "mlp" and self.history != 1:
            raise ValueError(
                f"model.history={self.history} but model.encoder='mlp' reads the current observation only; "
                "expected model.history=1, or model.encoder=orchid / attention to use a window"
            )
        max_len = self.orchid.max_len
        if max_len not in (self.history, _ORCHID_DEFAULT_MAX_LEN):
            raise ValueError(
                f"model.orchid.max_len={max_len} contradicts model.history={self.history}; the Orchid block's "
                "max_len is set from model.history, so expected model.orchid.max_len left out"
            )
        # Frozen dataclass: the documented way to set a derived field in __post_init__.
        object.__setattr__(self, "orchid", dataclasses.replace(self.orchid, max_len=self.history))

    @property
    def env_history(self) -> int:
        """Steps of past observations the team env must supply as ``obs["history"]``: L for a sequence encoder,
        0 (no window in the observation) for ``mlp``."""
        return 0 if self.encoder == "mlp" else self.history
