"""Typed configs of the model parts.

Each dataclass is frozen and validates itself in ``__post_init__``; errors name the setting by its dotted
path in the experiment config (``model.graph.sparsity``) and say what was expected, so a bad YAML value or
CLI override fails before any model or Ray process is built. Field names are the YAML/CLI names.

To add a model part: add a frozen dataclass with its own ``__post_init__`` and a field on ``ModelConfig``
with ``field(default_factory=...)``; ``ModelConfig.__post_init__`` checks that nested parts have the right
type.

Every config lives here, also those of the layers (``MoEConfig``, ``OrchidConfig``) and of the early exits, and this
module imports no model code (not even torch): reading and checking a config builds nothing, and no model module can
form an import circle through it (tests/model/test_layering.py). The model modules re-export their configs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, get_args

from commformer.validate import (
    MAX_DEPTH,
    MAX_WIDTH,
    ConfigError,
    require_bool,
    require_choice,
    require_float,
    require_int,
)

__all__ = [
    "CONDITIONINGS",
    "ENCODERS",
    "HEADS",
    "MOE_ACTIVATIONS",
    "MOE_GATES",
    "Conditioning",
    "EarlyExitConfig",
    "EncoderName",
    "GateConfig",
    "GraphConfig",
    "HeadName",
    "MoEActivationName",
    "MoEConfig",
    "MoEGateName",
    "ModelConfig",
    "OrchidConfig",
]

HeadName = Literal["linear", "moe"]
HEADS: tuple[str, ...] = get_args(HeadName)
ActivationName = Literal["gelu", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = get_args(ActivationName)

GraphInit = Literal["uniform", "random"]
GRAPH_INITS: tuple[str, ...] = get_args(GraphInit)

EncoderName = Literal["mlp", "orchid", "attention"]
ENCODERS: tuple[str, ...] = get_args(EncoderName)
DecoderName = Literal["none", "autoregressive"]
DECODERS: tuple[str, ...] = get_args(DecoderName)
LogStdName = Literal["parameter", "state"]
LOG_STDS: tuple[str, ...] = get_args(LogStdName)

MoEGateName = Literal["topk", "dense_to_sparse", "activation"]
MOE_GATES: tuple[str, ...] = get_args(MoEGateName)
MoEActivationName = Literal["sigmoid", "tanh", "gelu"]
MOE_ACTIVATIONS: tuple[str, ...] = get_args(MoEActivationName)

Conditioning = Literal["type1", "type2", "none"]
CONDITIONINGS: tuple[str, ...] = get_args(Conditioning)


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
    switch_margin: float = 0.0
    """Hysteresis of the graph: a receiver replaces a sender it hears only by one whose logit is higher by more than
    this; until then it keeps hearing it, though the plain top-k would have changed. 0 = the plain top-k. The senders
    held are state the learner updates after each graph step and the EnvRunners receive with the weights."""
    probes: int = 4
    """Senders a receiver does not hear whose worth the graph gradient samples per learner forward, where attention
    reads the graph in the gathered layout (large teams with few senders each, commformer/layers/attention.py): there
    only the listed pairs are scored. 0 = the held senders alone. The dense layout assesses every sender."""
    warmup_fraction: float = 0.0
    """The first fraction of the run (of ``stop.env_steps``) in which every receiver hears every sender while the graph
    logits learn; then the top-k. The graph's gradient ranks each sender by what its message adds as the policy reads
    messages, and a policy that has only ever heard its first k senders reads no other yet (docs/DESIGN.md, "The
    graph"). Learned gates are open throughout the warm-up, without cost or gradient, for the same reason: a gate that
    the cost closes before the policy reads messages never learns what they buy. The learner ends the warm-up after
    the update that crosses the fraction; the EnvRunners receive that with the weights. 0 = the top-k and the gates
    from the start. Needs the dense layout (``gathers(N, k)`` false)."""
    held_product: bool = False
    """Give each sender a receiver hears the gradient of the plain product ``softmax * A`` too, besides the
    renormalised attention's that every sender gets (commformer/layers/attention.py, ``masked_weights``): both
    pressures on a held sender, whether hearing it at all helps and whether it is worth more than the rest of what
    the receiver reads (docs/DESIGN.md, "The graph")."""
    init: GraphInit = "uniform"
    """Initial logits: ``uniform`` (all ones, as the official code; ties make the first graph the ring
    i <- i+1..i+k) or ``random`` (standard normal draws from the run's seed: a random graph of k senders; with
    ``training.graph_freeze_fraction=0`` it is the fixed random graph of the communication benchmark)."""

    def __post_init__(self) -> None:
        sparsity = require_float("model.graph.sparsity", self.sparsity)
        if not 0.0 < sparsity <= 1.0:
            raise ConfigError(f"model.graph.sparsity={self.sparsity}; expected a number in (0, 1]")
        if self.k is not None:
            require_int("model.graph.k", self.k, 1)
        require_bool("model.graph.gumbel", self.gumbel)
        require_int("model.graph.probes", self.probes, 0)
        require_bool("model.graph.held_product", self.held_product)
        warmup = require_float("model.graph.warmup_fraction", self.warmup_fraction)
        if not 0.0 <= warmup < 1.0:
            raise ConfigError(f"model.graph.warmup_fraction={self.warmup_fraction}; expected a number in [0, 1)")
        if require_float("model.graph.switch_margin", self.switch_margin) < 0.0:
            raise ConfigError(f"model.graph.switch_margin={self.switch_margin}; expected a number >= 0")
        require_choice("model.graph.init", self.init, GRAPH_INITS)
        tau = require_float("model.graph.gumbel_tau", self.gumbel_tau)
        if tau <= 0.0:
            raise ConfigError(f"model.graph.gumbel_tau={self.gumbel_tau}; expected a number > 0")

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
                raise ConfigError(f"model.graph.k={self.k} but the environment has N={n_agents} agents; {expected}")
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
    target_open_rate: float | None = None
    """A bandwidth budget: the open rate (mean open probability over alive receivers) the gates may use. When set,
    the cost's weight adapts instead of staying at ``cost_weight``: it starts there and after every gradient step
    moves by ``budget_lr * (rate - target)``, never below 0 (dual ascent on rate <= target). It grows while the gates
    open more than the budget and falls back to 0 once they open less, so the gates close only as far as the budget
    asks, those whose messages buy least first. The target must be one the task can meet: below the open rate the
    task needs, the weight grows until it closes needed gates too (docs/DESIGN.md, "Temporal gates"). None = the
    fixed ``cost_weight``."""
    budget_lr: float = 0.001
    """The budget's step: the change of the cost weight per gradient step per unit of open rate above the target
    (needs ``target_open_rate``)."""

    def __post_init__(self) -> None:
        require_bool("model.gates.enabled", self.enabled)
        cost = require_float("model.gates.cost_weight", self.cost_weight)
        if cost < 0.0:
            raise ConfigError(f"model.gates.cost_weight={self.cost_weight}; expected a number >= 0")
        require_float("model.gates.init_bias", self.init_bias)
        if require_float("model.gates.budget_lr", self.budget_lr) <= 0.0:
            raise ConfigError(f"model.gates.budget_lr={self.budget_lr}; expected a number > 0")
        if self.target_open_rate is None:
            if self.budget_lr != GateConfig.budget_lr:
                raise ConfigError(
                    f"model.gates.budget_lr={self.budget_lr} is set but model.gates.target_open_rate is not; expected "
                    "a target_open_rate in (0, 1] for the budget to adapt towards, or budget_lr left unset"
                )
        elif not 0.0 < require_float("model.gates.target_open_rate", self.target_open_rate) <= 1.0:
            raise ConfigError(f"model.gates.target_open_rate={self.target_open_rate}; expected a number in (0, 1]")


@dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts head (commformer/layers/moe.py): number of experts, gate, temperature schedule,
    auxiliary-loss weights."""

    experts: int = 4
    """Number of expert MLPs E (>= 1)."""
    gate: MoEGateName = "topk"
    """Gate: ``topk`` (sparse softmax over the K largest logits), ``dense_to_sparse`` or ``activation``."""
    k: int = 2
    """Experts per input for the ``topk`` gate, 1 <= k <= experts (ignored by the dense gates, so their
    ``experts=1`` needs no ``k=1``). K >= 2 is the safe choice (REFERENCE): with K = 1 the chosen weight is
    exactly 1, so the router learns only from the auxiliary losses, not from the policy loss."""
    tau_start: float = 1.0
    """Temperature of the dense gates at the start of training (> 0)."""
    tau_end: float = 0.1
    """Temperature of the dense gates at the end of training (> 0), reached geometrically; see ``tau_at``."""
    activation: MoEActivationName = "sigmoid"
    """sigma of the ``activation`` gate."""
    hidden: int | None = None
    """Hidden width of each expert MLP; None = the input width."""
    balance_coeff: float = 0.01
    """Weight of the Switch/GShard balance loss in ``aux_loss`` (>= 0)."""
    z_coeff: float = 0.001
    """Weight of the router z-loss in ``aux_loss`` (>= 0)."""

    def __post_init__(self) -> None:
        require_int("model.moe.experts", self.experts, 1, 1024)
        require_choice("model.moe.gate", self.gate, MOE_GATES)
        require_int("model.moe.k", self.k, 1)
        if self.gate == "topk" and self.k > self.experts:
            raise ConfigError(
                f"model.moe.k={self.k} is larger than model.moe.experts={self.experts}; "
                f"expected 1 <= k <= {self.experts}"
            )
        for name in ("tau_start", "tau_end"):
            if require_float(f"model.moe.{name}", getattr(self, name)) <= 0.0:
                raise ConfigError(f"model.moe.{name}={getattr(self, name)}; expected a number > 0")
        require_choice("model.moe.activation", self.activation, MOE_ACTIVATIONS)
        if self.hidden is not None:
            require_int("model.moe.hidden", self.hidden, 1, MAX_WIDTH)
        for name in ("balance_coeff", "z_coeff"):
            if require_float(f"model.moe.{name}", getattr(self, name)) < 0.0:
                raise ConfigError(f"model.moe.{name}={getattr(self, name)}; expected a number >= 0")

    def tau_at(self, progress: float) -> float:
        """Temperature at ``progress`` in [0, 1] (clipped): ``tau_start * (tau_end / tau_start) ** progress``.

        Geometric, not linear: tau divides the logits, so what matters is its ratio from one step to the next.
        A geometric schedule sharpens the gate by the same factor in every equal slice of training; a linear one
        from 1.0 to 0.1 is still at 0.55 half-way (under 2x sharper) and does most of its sharpening (5x) in
        the last 10% of training, too late for the experts to specialise.
        """
        p = min(max(float(progress), 0.0), 1.0)
        return self.tau_start * (self.tau_end / self.tau_start) ** p


@dataclass(frozen=True)
class OrchidConfig:
    """The Orchid sequence layer (Karami & Ghodsi 2024); commformer/layers/orchid.py describes it."""

    max_len: int = 256
    """Longest window in time steps. h0 reads the lag as lag / max_len; a longer input raises."""
    short_kernel: int = 3
    """Width of the causal depthwise conv on [x0 | x1 | v] after the input projection."""
    conditioning: Conditioning = "type1"
    """Data-dependent kernel: "type1" (phase suppression), "type2" (cross-correlation) or "none" (h0 only)."""
    cond_kernel: int = 3
    """Odd width of the conditioning network's depthwise convs (over time: causal; over frequency: centred)."""
    filter_order: int = 16
    """Width of the implicit-filter FFN that produces h0."""
    filter_bands: int = 2
    """Sinusoidal bands in h0's positional features [t, cos(2 pi b t), sin(2 pi b t)], b = 1..filter_bands."""

    def __post_init__(self) -> None:
        require_int("model.orchid.max_len", self.max_len, 1)
        require_int("model.orchid.short_kernel", self.short_kernel, 1, MAX_WIDTH)
        if self.conditioning not in CONDITIONINGS:
            raise ConfigError(f"model.orchid.conditioning={self.conditioning!r}; expected one of {CONDITIONINGS}")
        require_int("model.orchid.cond_kernel", self.cond_kernel, 1, MAX_WIDTH)
        if self.cond_kernel % 2 == 0:
            raise ConfigError(
                f"model.orchid.cond_kernel={self.cond_kernel}; expected an odd integer (the conv over frequency is "
                "centred)"
            )
        require_int("model.orchid.filter_order", self.filter_order, 1, MAX_WIDTH)
        require_int("model.orchid.filter_bands", self.filter_bands, 1, MAX_WIDTH)


_ORCHID_DEFAULT_MAX_LEN = OrchidConfig().max_len


@dataclass(frozen=True)
class EarlyExitConfig:
    """JEI-DNN early exits (``model.early_exit``, commformer/early_exit.py); off by default."""

    enabled: bool = False
    """Build an inference head and a gate after the encoder and after every block but the last."""
    cost_weight: float = 0.1
    """lambda of the gates' surrogate target ``loss_l + lambda * C_l`` (C_l: relative MACs); 0 = never exit early."""
    threshold: float = 0.5
    """Test-time rule: the team exits at the first depth where every alive agent's gate is >= threshold."""
    rollout: bool = False
    """Act with exits on the EnvRunners during training (exit depths recorded and replayed); default full depth."""
    distill_weight: float = 1.0
    """Weight of the heads' distillation loss ``KL(pi_final || pi_l)`` in the learner's total loss."""
    gate_weight: float = 1.0
    """Weight of the gates' binary cross-entropy in the learner's total loss."""
    warmup_steps: int = 20
    """Gradient steps at the start in which only the heads learn (the gates' targets need trained heads)."""
    alternate_every: int = 10
    """After warm-up, gates and heads take turns every this many gradient steps (gates first)."""
    backbone_grad: bool = False
    """Let the heads' losses train the encoder and blocks beneath them; false keeps the main policy unaffected."""
    gate_init_bias: float = -2.0
    """Initial gate bias; sigmoid(-2) = 0.12, so untrained gates do not exit."""
    gate_lr: float = 0.02
    """Adam learning rate of the gates, which have their own optimizer: each gate is a 5-parameter classifier of a
    target that moves only as the heads learn. At the policy's lr (5e-4) the gates of a 250k-step run on
    simple_spread were still below the threshold at the end, with targets at depth 0 for most samples."""

    def __post_init__(self) -> None:
        for name in ("enabled", "rollout", "backbone_grad"):
            require_bool(f"model.early_exit.{name}", getattr(self, name))
        if require_float("model.early_exit.gate_lr", self.gate_lr) <= 0.0:
            raise ConfigError(f"model.early_exit.gate_lr={self.gate_lr}; expected a number > 0")
        for name in ("cost_weight", "distill_weight", "gate_weight"):
            if require_float(f"model.early_exit.{name}", getattr(self, name)) < 0.0:
                raise ConfigError(f"model.early_exit.{name}={getattr(self, name)}; expected a number >= 0")
        threshold = require_float("model.early_exit.threshold", self.threshold)
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"model.early_exit.threshold={self.threshold}; expected a number in (0, 1)")
        require_int("model.early_exit.warmup_steps", self.warmup_steps, 0)
        require_int("model.early_exit.alternate_every", self.alternate_every, 1)
        require_float("model.early_exit.gate_init_bias", self.gate_init_bias)

    def phase(self, step: int) -> str:
        """Which exit part learns at gradient step ``step`` (0-based): ``heads`` or ``gates``."""
        if step < self.warmup_steps:
            return "heads"
        return "gates" if ((step - self.warmup_steps) // self.alternate_every) % 2 == 0 else "heads"


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
    decoder: DecoderName = "none"
    """``none``: every agent's policy head reads its communicated features (CommFormer's encoder variant).
    ``autoregressive``: CommFormer-dec, the official code's default: the agents choose one after another and each
    reads, along its graph edges, the actions of those before it (commformer/layers/decoder.py)."""
    decoder_blocks: int = 1
    """Blocks of the autoregressive decoder (the official code uses as many as encoder blocks, 1 on SMAC)."""
    log_std: LogStdName = "parameter"
    """Continuous (Box) actions only: the Gaussian's log-std is ``parameter``, one learned value per action entry
    shared by every state and agent (PPO practice), or ``state``, a second output of the policy head, clamped to
    ``commformer.distributions.LOG_STD_BOUNDS``. Discrete actions ignore it."""
    log_std_init: float = 0.0
    """Continuous actions only: the initial log-std (0: std 1; for a box [0, 1] about -1 explores within it)."""

    def __post_init__(self) -> None:
        require_int("model.embed_dim", self.embed_dim, 1, MAX_WIDTH)
        require_int("model.num_heads", self.num_heads, 1)
        require_int("model.num_blocks", self.num_blocks, 1, MAX_DEPTH)
        require_int("model.mlp_ratio", self.mlp_ratio, 1, 16)
        if self.embed_dim % self.num_heads != 0:
            raise ConfigError(
                f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}; "
                "expected embed_dim to be a multiple of num_heads"
            )
        require_bool("model.agent_embedding", self.agent_embedding)
        require_bool("model.use_state", self.use_state)
        require_bool("model.communicate", self.communicate)
        require_choice("model.activation", self.activation, ACTIVATIONS)
        require_choice("model.head", self.head, HEADS)
        require_choice("model.value_head", self.value_head, HEADS)
        require_choice("model.decoder", self.decoder, DECODERS)
        require_int("model.decoder_blocks", self.decoder_blocks, 1, MAX_DEPTH)
        require_choice("model.log_std", self.log_std, LOG_STDS)
        require_float("model.log_std_init", self.log_std_init)
        if not -5.0 <= self.log_std_init <= 2.0:
            raise ValueError(
                f"model.log_std_init={self.log_std_init}; expected a log-std in [-5, 2] (std 0.0067 .. 7.4), the "
                "range the state-dependent log-std is clamped to"
            )
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
                raise ConfigError(
                    f"model.{name} is a {type(value).__name__}; expected a {cls.__name__} "
                    "(build nested parts as dataclasses, not dicts)"
                )
        self._check_history()
        if self.decoder == "autoregressive" and self.early_exit.enabled:
            # An exit would act before the decoder, from features that have not read the earlier agents' actions:
            # a different policy, whose PPO terms and costs the exits' training does not model.
            raise ConfigError(
                "model.decoder='autoregressive' with model.early_exit.enabled=true: the early exits act without the "
                "decoder; expected model.decoder='none' with exits, or exits disabled with the decoder"
            )

    def _check_history(self) -> None:
        """Validates ``encoder`` and ``history`` and derives ``orchid.max_len = history``.

        A window with ``mlp`` is refused rather than ignored: the saved config would claim L steps while the
        policy reads one, and the env would still build and store the unused window. ``orchid.max_len`` (the
        block's longest input, and the scale of its positional features) is the window length by construction;
        an explicit value other than ``history`` would be a second, contradicting source of the same fact.
        """
        require_choice("model.encoder", self.encoder, ENCODERS)
        require_int("model.history", self.history, 1, 4096)
        if self.encoder == "mlp" and self.history != 1:
            raise ConfigError(
                f"model.history={self.history} but model.encoder='mlp' reads the current observation only; "
                "expected model.history=1, or model.encoder=orchid / attention to use a window"
            )
        max_len = self.orchid.max_len
        if max_len not in (self.history, _ORCHID_DEFAULT_MAX_LEN):
            raise ConfigError(
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
