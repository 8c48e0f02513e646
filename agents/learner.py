"""Bi-level PPO for CommFormer: per-agent clipped ratios, ValueNorm + Huber critic, two optimizers.

Lower level: every parameter except the graph logits (optimizer "model", lr `training.lr`).
Upper level: the graph logits (optimizer "graph", lr `training.graph_lr`).

Schedule (decided): every `graph_every`-th gradient step updates only the graph, all other steps update only
the lower level, both on the same PPO loss and the same rollout - CommFormer's own alternation, which is "graph
on every 5th PPO epoch" when one epoch is one minibatch. We count gradient steps rather than epochs because
RLlib's cyclic minibatch iterator does not expose epoch boundaries. A held-out split (the DARTS reading of
bi-level) would halve the data of both levels; with PPO's clipped surrogate already bounding each step, the
shared batch keeps the sample efficiency. After `graph_freeze_fraction` of the run the graph stops moving.

Early exits (`model.early_exit`, commformer/early_exit.py): the heads learn to imitate the final head
(distillation) and the gates learn the JEI-DNN surrogate target, jointly with PPO inside the same loss; heads and
gates take turns (`EarlyExitConfig.phase` of the gradient-step counter) after a warm-up in which only the heads
learn. Both exit losses reach only the exit modules (detached inputs). The heads are ordinary lower-level
parameters (the "model" optimizer); the gates have their own optimizer ("gates", lr `model.early_exit.gate_lr`),
stepped with the model on every non-graph step. When the EnvRunners acted with exits
the PPO ratio is taken on the recorded head (agents/rl_module.py replays the depth).

Per-agent ratios (MAT / CommFormer): the joint log-prob of N agents makes one ratio whose clip range shrinks
per agent as N grows; clipping each agent's own ratio keeps the trust region per decision. Dead agents are
excluded from every mean.

The batch. RLlib's PPO learner pipeline is replaced by `TeamPPOBatch` (agents/team_batch.py), which builds the same
batch from whole arrays and keeps only the sampled steps: RLlib's pipeline appends an artificial bootstrap step to every
episode chunk and carried those rows, masked, through every minibatch (one row per chunk: docs/BENCHMARKS.md, "Figures
behind code choices"). `minibatch_count` makes it `num_epochs x round(rows / minibatch_size)` minibatches, so the
sampler's overshoot does not cost a whole extra minibatch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.algorithms.ppo.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner.learner_connector_pipeline import LearnerConnectorPipeline
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.learner import ENTROPY_KEY, POLICY_LOSS_KEY, VF_LOSS_KEY
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.typing import ModuleID, ParamDict, TensorType
from torch import Tensor

from agents.algorithm import CommFormerPPOConfig
from agents.rl_module import (
    EXIT_DEPTH,
    GATE_LOGIT,
    GATE_OPEN,
    POLICY_OUTPUT,
    VALUES_NORMALIZED,
    CommFormerRLModule,
)
from agents.rllib_private import (
    MinibatchCountHook,
    learner_connector,
    learner_params,
    optimizer_names_per_module,
    optimizer_param_refs,
    replace_learner_connector,
    steps_through_scaler_or_schedulers,
)
from agents.team_batch import PROX_FINAL_LOGITS, PROX_GATE_LOGITS, PROX_LOGITS, TeamPPOBatch
from commformer.distributions import categorical_log_prob, gaussian_entropy, gaussian_log_prob
from commformer.early_exit import (
    EarlyExitConfig,
    distill_kl,
    exit_macs,
    gate_loss,
    gate_targets,
    surrogate_target,
    team_exit_depth,
)
from commformer.functional import log_softmax
from commformer.gates import gate_log_prob
from commformer.policy import PolicyOutput

MODEL_OPTIMIZER = "model"
GRAPH_OPTIMIZER = "graph"
GATES_OPTIMIZER = "gates"


def masked_mean(x: Tensor, weight: Tensor) -> Tensor:
    """Mean of `x` over entries with weight 1 (weights are 0/1 masks broadcast to x's shape)."""
    return (x * weight).sum() / weight.sum().clamp(min=1.0)


@dataclass(frozen=True)
class GateTerms:
    """The temporal gates' share of each agent's log-prob (commformer/gates.py): the recorded decisions and the
    gate logits of the current, behaviour and (decoupled PPO) proximal policies, each (B, N)."""

    decision: Tensor
    logit: Tensor
    old_logit: Tensor
    prox_logit: Tensor | None = None


def ppo_team_loss(
    logits: Tensor,
    old_logits: Tensor,
    actions: Tensor,
    advantages: Tensor,
    weight: Tensor,
    clip_param: float,
    prox_logits: Tensor | None = None,
    gates: GateTerms | None = None,
    dims_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-agent clipped PPO surrogate; with `prox_logits`, the decoupled form for stale batches.

    Args:
        logits: (B, N, A) current masked logits.  old_logits: (B, N, A) the rollout's (behaviour) masked logits.
            With `dims_mask` (continuous actions), every "logits" argument is a Gaussian's inputs (B, N, 2A)
            ``[mean | log_std]`` instead (commformer/distributions.py).
        actions: (B, N) int; (B, N, A) float, the unclipped samples, for continuous actions.
        advantages: (B,) team advantages (shared by all agents).
        weight: (B, N) 0/1 - alive agents at valid (non-bootstrap) steps.
        prox_logits: optional (B, N, A) logits of the weights the update started from (the proximal policy).
            Decoupled PPO (Hilton et al. 2021, "Batch size-invariance for policy optimization"): the ratio is
            clipped around the proximal policy, r = pi / pi_prox, and the surrogate is importance-weighted by
            pi_prox / pi_behaviour. With a batch sampled one update back (`training.sample_ahead`) the plain
            ratio pi / pi_behaviour starts outside the clip range wherever the last update moved the policy, and
            those steps give no gradient. Without a lag, pi_prox = pi_behaviour and this is plain PPO.
        gates: optional sampled gate decisions: agent i's log-prob is then that of its joint decision,
            log p(gate_i) + log pi(a_i | gates), so its ratio (and clip) covers both; this is the gates' task
            gradient (the score function). The entropy bonus stays the actions' only.
        dims_mask: continuous actions: (B, N, A) the entries that are each agent's own (the team env's
            action_mask); None for discrete actions.
    Returns policy_loss, entropy, approx_kl and clip_fraction (scalars; the last two against the proximal
    policy when given), and with gates ``gate_clipped_fraction``: the share of agent steps whose policy gradient
    the clip removes only because of the gate's share of the ratio.
    """
    continuous = dims_mask is not None

    def log_prob(inputs: Tensor) -> Tensor:
        if continuous:
            return gaussian_log_prob(inputs, actions, dims_mask)
        return categorical_log_prob(inputs, actions)

    if continuous:
        logp = log_prob(logits)  # (B, N)
        entropy = gaussian_entropy(logits, dims_mask)  # (B, N), padded entries excluded
    else:  # one log-softmax for both (commformer/functional.py says why that counts)
        logp_all = log_softmax(logits)  # (B, N, A)
        logp = logp_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)  # (B, N)
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, N); masked actions contribute 0 * finite
    action_logp = logp
    if gates is not None:
        logp = logp + gate_log_prob(gates.logit, gates.decision)
    with torch.no_grad():
        old_logp = log_prob(old_logits)
        if gates is not None:
            old_logp = old_logp + gate_log_prob(gates.old_logit, gates.decision)
        behaviour_weight = torch.ones_like(old_logp)
        if prox_logits is not None:
            prox_logp = log_prob(prox_logits)
            if gates is not None:
                if gates.prox_logit is None:
                    raise ValueError("prox_logits were given without the proximal gate logits (GateTerms.prox_logit)")
                prox_logp = prox_logp + gate_log_prob(gates.prox_logit, gates.decision)
            behaviour_weight = (prox_logp - old_logp).exp()  # pi_prox / pi_behaviour, (B, N)
            old_logp = prox_logp
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    adv = advantages.unsqueeze(-1)  # (B, 1): every agent shares the team advantage
    clipped = torch.min(ratio * adv, ratio.clamp(1.0 - clip_param, 1.0 + clip_param) * adv)
    surrogate = behaviour_weight * clipped
    with torch.no_grad():
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, weight)  # Schulman's k3 estimator
        clip_fraction = masked_mean(((ratio - 1.0).abs() > clip_param).to(ratio.dtype), weight)
    terms = {
        "policy_loss": -masked_mean(surrogate, weight),
        "entropy": masked_mean(entropy, weight),
        "approx_kl": approx_kl,
        "clip_fraction": clip_fraction,
    }
    if gates is not None:
        with torch.no_grad():
            # The gates' share of the ratio: the agent steps whose gradient the clip removes only because the gate's
            # probability moved (with the actions' ratio alone they would still be inside the clip range).
            reference = gates.old_logit if gates.prox_logit is None or prox_logits is None else gates.prox_logit
            old_gate = gate_log_prob(reference, gates.decision)
            action_ratio = (action_logp - (old_logp - old_gate)).exp()
            terms["gate_clipped_fraction"] = masked_mean(
                (_clipped_away(ratio, adv, clip_param) & ~_clipped_away(action_ratio, adv, clip_param)).to(ratio.dtype),
                weight,
            )
    return terms


def _clipped_away(ratio: Tensor, adv: Tensor, clip_param: float) -> Tensor:
    """Where PPO's min(r A, clip(r) A) takes the clipped, constant term: the step gives no policy gradient."""
    return ((adv > 0) & (ratio > 1.0 + clip_param)) | ((adv < 0) & (ratio < 1.0 - clip_param))


def early_exit_loss(
    out: PolicyOutput, weight: Tensor, costs: Tensor, config: EarlyExitConfig, phase: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """The exits' share of the loss at one gradient step, and its statistics.

    Args:
        out: a full-depth forward with exits.  weight: (B, N) 0/1 agents that count.
        costs: (G + 1,) relative MACs C_l of reaching each exit (``ExitMacs.relative``).
        phase: ``heads`` (distillation, weight ``distill_weight``) or ``gates`` (surrogate BCE, ``gate_weight``).

    Per team, loss_l = mean over counted agents of KL(pi_final || pi_l) and loss_G = 0; the target exit is
    l* = argmin_l loss_l + lambda * C_l (commformer/early_exit.py).
    """
    assert out.exits is not None
    exits = out.exits
    kl = distill_kl(exits.final_logits, exits.head_logits)  # (B, G, N)
    w = weight.unsqueeze(1)  # (B, 1, N)
    distill = (kl * w).sum() / (w.sum() * kl.shape[1]).clamp(min=1.0)
    with torch.no_grad():
        team_kl = (kl * w).sum(-1) / w.sum(-1).clamp(min=1.0)  # (B, G)
        losses = torch.cat([team_kl, torch.zeros_like(team_kl[:, :1])], dim=-1)  # (B, G + 1)
        optimal = surrogate_target(losses, costs, config.cost_weight)  # (B,)
        valid_team = weight.sum(-1) > 0  # (B,)
        gates = torch.sigmoid(exits.gate_logits)
        depth = team_exit_depth(gates, weight, config.threshold).to(kl.dtype)  # the rule's choice on this batch
    gates_loss = gate_loss(exits.gate_logits, gate_targets(optimal, kl.shape[1]), weight)
    total = config.distill_weight * distill if phase == "heads" else config.gate_weight * gates_loss
    teams = valid_team.to(kl.dtype)
    stats = {
        "exit_phase_gates": torch.tensor(float(phase == "gates")),
        "exit_distill_kl": distill.detach(),
        "exit_gate_loss": gates_loss.detach(),
        "exit_target_depth_mean": (optimal.to(kl.dtype) * teams).sum() / teams.sum().clamp(min=1.0),
        "exit_depth_mean": (depth * teams).sum() / teams.sum().clamp(min=1.0),
    }
    for layer in range(kl.shape[1]):
        stats[f"exit_kl_{layer}"] = ((kl[:, layer] * weight).sum() / weight.sum().clamp(min=1.0)).detach()
    return total, stats


def huber_value_loss(values_norm: Tensor, targets_norm: Tensor, weight: Tensor, delta: float) -> Tensor:
    """Huber loss of per-agent normalised values (B, N) against the team's normalised targets (B,)."""
    err = F.huber_loss(values_norm, targets_norm.unsqueeze(-1).expand_as(values_norm), reduction="none", delta=delta)
    return masked_mean(err, weight)


def loss_terms(
    policy: dict[str, Tensor],
    value_loss: Tensor,
    out: PolicyOutput,
    vf_loss_coeff: float,
    entropy_coeff: float,
    exit_loss: Tensor | None = None,
) -> dict[str, Tensor]:
    """The training loss as named terms, each with its coefficient applied, so that their sum is the loss (TorchRL's
    `loss_*` convention): PPO's clipped surrogate (`ppo_team_loss`), the value loss (`huber_value_loss`), the entropy
    bonus, the temporal gates' communication cost, the MoE heads' balance and z losses (0 without MoE heads) and,
    with early exits, the exits' loss (`early_exit_loss`)."""
    terms = {
        "loss_policy": policy["policy_loss"],
        "loss_value": vf_loss_coeff * value_loss,
        "loss_entropy": -entropy_coeff * policy["entropy"],
        "loss_comm": out.comm_cost,
        "loss_moe": out.aux_loss,
    }
    if exit_loss is not None:
        terms["loss_exit"] = exit_loss
    return terms


def sum_of_terms(terms: dict[str, Tensor]) -> Tensor:
    """The loss: the terms added in their order (one fixed order, so the sum is the same to the last bit)."""
    total, *rest = terms.values()
    for term in rest:
        total = total + term
    return total


class CommFormerPPOLearner(MinibatchCountHook, PPOTorchLearner):
    """PPO learner with the bi-level graph schedule. Its settings beyond PPOConfig's are one typed
    `LearnerSettings` (agents/algorithm.py). With the algorithm's `sample_ahead` the batches are one update stale:
    decoupled PPO around the proximal logits `TeamPPOBatch` computes.
    """

    @override(PPOTorchLearner)
    def build(self) -> None:
        config = self.config
        assert isinstance(config, CommFormerPPOConfig)
        self.settings = config.learner_settings()  # before RLlib's build, which configures the optimizers
        super().build()
        self._decoupled = bool(config.sample_ahead)  # stale batches (ppo_team_loss)
        self._grad_steps = 0  # gradient steps taken over the whole run; decides the level of the next step
        self._graph_frozen = False
        self._settle_graph = False  # whether the step being applied is an upper-level one (apply_gradients)
        self._exit_costs: dict[ModuleID, Tensor] = {}  # relative MACs per exit, measured once per module
        if learner_connector(self) is not None and config.add_default_connectors_to_learner_pipeline:
            # RLlib's default pipeline, replaced by one piece that builds the same batch from whole arrays.
            batch = TeamPPOBatch(
                gamma=config.gamma,
                lambda_=config.lambda_,
                device=self.device or "cpu",
                proximal=self._decoupled,
            )
            replace_learner_connector(self, LearnerConnectorPipeline(connectors=[batch]))
        self._arm_graph_noise()

    def _arm_graph_noise(self) -> None:
        """Tells every module whether its next training forward belongs to an upper-level step (a gathered graph then
        draws senders to assess, `model.graph.probes`) and whether it adds Gumbel noise to the graph's surrogate
        gradient (`model.graph.gumbel`): RLlib calls `forward_train` with the batch only, so the level of the step
        travels as module attributes, set after every gradient step."""
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule is not iterable)
            module = self.module[module_id].unwrapped()
            assert isinstance(module, CommFormerRLModule)
            module.graph_step = self.is_graph_step()
            module.graph_noise = module.model_cfg.graph.gumbel and module.graph_step

    @override(PPOTorchLearner)
    def update(self, *args: Any, **kwargs: Any) -> Any:
        """RLlib's update (batch preparation and every minibatch step) with `resources.learner_threads` torch
        threads; the process's own setting is restored after, so sampling in the same process keeps one."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.settings.threads)
        try:
            return super().update(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    @override(MinibatchCountHook)
    def minibatch_count(
        self, *, training_data: Any, num_total_minibatches: int, num_epochs: int, minibatch_size: int | None
    ) -> int:
        """`num_epochs` x round(rows / minibatch_size) minibatches, where RLlib takes as many as it needs to show
        every row `num_epochs` times. The sampler overshoots `train_batch_size` by up to one vector step (3,233
        rows for a 3,200-step SMAX batch of 128 battles): RLlib's rule then pays a whole extra minibatch per
        iteration for 1% more rows. Data-parallel Learners get their count from the LearnerGroup (non-zero)."""
        if not num_total_minibatches and minibatch_size and training_data.episodes is not None:
            rows = sum(len(episode) for episode in training_data.episodes)  # = the batch: no bootstrap rows
            num_total_minibatches = num_epochs * max(1, round(rows / minibatch_size))
        return num_total_minibatches

    # -- optimizers ---------------------------------------------------------------------------------------------

    @override(PPOTorchLearner)
    def configure_optimizers_for_module(self, module_id: ModuleID, config: AlgorithmConfig | None = None) -> None:
        module = self.module[module_id].unwrapped()
        assert isinstance(module, CommFormerRLModule)
        gate_params = module.policy.gate_parameters()
        gate_ids = {id(p) for p in gate_params}
        model_params = [p for p in module.policy.model_parameters() if id(p) not in gate_ids]
        graph_params = module.policy.graph_parameters()
        lr = config.lr if config is not None else self.config.lr
        groups = (
            (MODEL_OPTIMIZER, model_params, lr),
            (GRAPH_OPTIMIZER, graph_params, self.settings.graph_lr),
            (GATES_OPTIMIZER, gate_params, module.model_cfg.early_exit.gate_lr),
        )
        for name, params, rate in groups:
            if params:  # no gates without early exits
                self.register_optimizer(
                    module_id=module_id,
                    optimizer_name=name,
                    optimizer=torch.optim.Adam(params, eps=self.settings.adam_eps, fused=True),  # one kernel
                    params=params,
                    lr_or_lr_schedule=rate,
                )

    def is_graph_step(self) -> bool:
        """Whether the next gradient step belongs to the upper level (graph logits only)."""
        return not self._graph_frozen and (self._grad_steps + 1) % self.settings.graph_every == 0

    @override(PPOTorchLearner)
    def before_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        super().before_gradient_based_update(timesteps=timesteps)
        self._graph_frozen = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0) >= self.settings.graph_freeze_env_steps
        self._arm_graph_noise()

    @override(PPOTorchLearner)
    def after_gradient_based_update(self, *, timesteps: dict[str, Any]) -> None:
        """Anneals the MoE temperature and ends the graph's warm-up (`model.graph.warmup_fraction`) *after* the
        update: the change reaches the EnvRunners with the weights, so the next rollout and the next update use the
        same tau and graph (the PPO consistency rule)."""
        super().after_gradient_based_update(timesteps=timesteps)
        progress = timesteps.get(NUM_ENV_STEPS_SAMPLED_LIFETIME, 0) / max(1, self.settings.total_env_steps)
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule is not iterable)
            module = self.module[module_id].unwrapped()
            assert isinstance(module, CommFormerRLModule)
            graph = module.policy.trunk.graph
            if graph.hears_all and progress >= module.model_cfg.graph.warmup_fraction:
                graph.end_warmup()
            if graph.hear_all is not None:
                self.metrics.log_value((module_id, "graph_hears_all"), float(graph.hears_all), window=1)
            if module.policy.moe_heads():
                tau = module.model_cfg.moe.tau_at(progress)
                module.policy.set_moe_tau(tau)
                self.metrics.log_value((module_id, "moe_tau"), tau, window=1)

    @override(PPOTorchLearner)
    def compute_gradients(self, loss_per_module: dict[ModuleID, TensorType], **kwargs: Any) -> ParamDict:
        """Backward once, then keep only the active level's gradients (the other level's are set to None, so
        its Adam skips them: no step, no moment update)."""
        graph_step = self.is_graph_step()
        self._settle_graph = graph_step  # apply_gradients: the senders held follow the logits after a graph step
        grads = super().compute_gradients(loss_per_module, **kwargs)
        active = {GRAPH_OPTIMIZER} if graph_step else {MODEL_OPTIMIZER, GATES_OPTIMIZER}
        keep = set()
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule is not iterable)
            for name, optimizer in self.get_optimizers_for_module(module_id):
                if name in active:
                    keep.update(optimizer_param_refs(self, optimizer))
        kept = {}
        params = learner_params(self)
        for ref, grad in grads.items():
            if ref in keep and grad is not None:
                kept[ref] = grad
            else:
                params[ref].grad = None
        self._grad_steps += 1
        self._arm_graph_noise()
        return self._skip_if_not_finite(kept)

    def _skip_if_not_finite(self, grads: ParamDict) -> ParamDict:
        """No update at all (no Adam step, no moment update) when any gradient has a NaN or inf.

        RLlib's default would zero the bad entries and step anyway, which still moves Adam's moments. The check
        reads the gradients after DDP's all-reduce, which spreads a NaN of one Learner to all of them, so every
        Learner skips the same steps and their parameters stay identical. One host sync per gradient step.
        """
        if not grads:
            return grads
        # The norm of all gradients is finite iff every entry is (a finite norm over float32's range counts as
        # not finite: such a step would be clipped to nothing anyway). One fused pass instead of a check per tensor.
        finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(list(grads.values()), foreach=True)))
        # Every data-parallel Learner skips the same step and RLlib sums their metrics: each counts its share.
        skipped = float(not finite) / max(self.config.num_learners, 1)
        for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule is not iterable)
            self.metrics.log_value((module_id, "skipped_updates"), skipped, reduce="sum")
            self.metrics.log_value((module_id, "skipped_updates_lifetime"), skipped, reduce="lifetime_sum")
        if finite:
            return grads
        params = learner_params(self)
        for ref in grads:
            params[ref].grad = None
        return {}

    @override(PPOTorchLearner)
    def postprocess_gradients_for_module(
        self, *, module_id: ModuleID, config: AlgorithmConfig | None = None, module_gradients_dict: ParamDict
    ) -> ParamDict:
        """RLlib's clipping by global norm, per optimizer, with the same coefficient and the same metric, in a
        fused pass over the tensors: RLlib's Python loop of a norm and two `nan_to_num`s per tensor costs more
        than Adam's step on a model this size. The gradients are finite here (`_skip_if_not_finite`), so
        RLlib's `nan_to_num` guards have nothing to change."""
        if config is None or config.grad_clip is None or config.grad_clip_by != "global_norm":
            return cast(
                ParamDict,
                super().postprocess_gradients_for_module(
                    module_id=module_id, config=config, module_gradients_dict=module_gradients_dict
                ),
            )
        for name, optimizer in self.get_optimizers_for_module(module_id):
            grads = list(self.filter_param_dict_for_optimizer(module_gradients_dict, optimizer).values())
            norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.tensor(0.0)
            coeff = (config.grad_clip / (norm + 1e-6)).clamp(max=1.0)  # RLlib's: 1 unless the norm exceeds the clip
            for grad in grads:
                grad.mul_(coeff)
            self.metrics.log_value(key=(module_id, f"gradients_{name}_global_norm"), value=norm, window=1)
        return module_gradients_dict

    @override(PPOTorchLearner)
    def apply_gradients(self, gradients_dict: ParamDict) -> None:
        """Steps every optimizer. RLlib's version checks every gradient tensor for NaN / inf twice more, one
        small op each; `compute_gradients` has already checked them all in one pass and dropped a bad step
        whole, and left the gradients on the parameters. With a gradient scaler or torch LR schedulers
        configured, RLlib's version runs. After an upper-level step each graph with a switch margin updates the
        senders it holds (`CommGraph.settle`), which the EnvRunners then receive with the weights."""
        if steps_through_scaler_or_schedulers(self):
            super().apply_gradients(gradients_dict)
        else:
            params = learner_params(self)
            for ref, grad in gradients_dict.items():
                params[ref].grad = grad
            for module_id, names in optimizer_names_per_module(self).items():
                for name in names:
                    self.get_optimizer(module_id, name).step()
        if self._settle_graph:
            for module_id in self.module.keys():  # noqa: SIM118 (MultiRLModule is not iterable)
                module = self.module[module_id].unwrapped()
                assert isinstance(module, CommFormerRLModule)
                module.policy.trunk.graph.settle()

    # -- loss -----------------------------------------------------------------------------------------------------

    @override(PPOTorchLearner)
    def compute_loss_for_module(
        self, *, module_id: ModuleID, config: AlgorithmConfig, batch: dict[str, Any], fwd_out: dict[str, Any]
    ) -> Tensor:
        """The sum of `loss_terms`' named terms; the terms and the batch's statistics are logged in one place."""
        assert isinstance(config, PPOConfig)
        module = self.module[module_id].unwrapped()
        assert isinstance(module, CommFormerRLModule)
        out: PolicyOutput = fwd_out[POLICY_OUTPUT]
        weight = batch[Columns.OBS]["alive"].to(out.values.dtype)  # (B, N); TeamPPOBatch keeps sampled steps only
        policy = self._policy_terms(module, config, batch, fwd_out, weight)
        targets_norm = self._value_targets(module, batch[Postprocessing.VALUE_TARGETS])
        value_loss = huber_value_loss(fwd_out[VALUES_NORMALIZED], targets_norm, weight, self.settings.huber_delta)
        exits = None
        if out.exits is not None:
            exit_cfg = module.model_cfg.early_exit
            if module_id not in self._exit_costs:
                self._exit_costs[module_id] = exit_macs(module.policy).relative().to(weight.device)
            exits = early_exit_loss(
                out, weight, self._exit_costs[module_id], exit_cfg, exit_cfg.phase(self._grad_steps)
            )
        entropy_coeff = float(self.entropy_coeff_schedulers_per_module[module_id].get_current_value())
        terms = loss_terms(
            policy, value_loss, out, config.vf_loss_coeff, entropy_coeff, None if exits is None else exits[0]
        )
        with torch.no_grad():
            self._log_loss_stats(module_id, module, batch, out, policy, value_loss, terms, exits, weight)
            gate = module.policy.trunk.gate
            if gate is not None and gate.budget is not None and out.gate_logit is not None:
                # The budget's step, after the cost term took the weight it had (commformer/gates.py, `adapt`).
                gate.adapt(float((out.gate_prob * weight).sum() / weight.sum().clamp(min=1.0)))
                self.metrics.log_value((module_id, "gate_cost_weight"), gate.weight, window=1)
        return sum_of_terms(terms)

    def _value_targets(self, module: CommFormerRLModule, targets: Tensor) -> Tensor:
        """The value targets (B,) in ValueNorm's units, after ValueNorm's statistics have taken this batch in
        (`training.value_norm`; the statistics stay put without it)."""
        if self.settings.value_norm:
            module.value_norm.update(targets)
        return module.value_norm.normalize(targets)

    def _policy_terms(
        self,
        module: CommFormerRLModule,
        config: PPOConfig,
        batch: dict[str, Any],
        fwd_out: dict[str, Any],
        weight: Tensor,
    ) -> dict[str, Tensor]:
        """The PPO policy terms (`ppo_team_loss`), with the sampled gates' log-probs in each agent's ratio.

        When the EnvRunners acted with early exits, a step taken at an exit gives two terms: the main policy's,
        on the final head's log-prob of the executed action (decoupled PPO with the exit as the behaviour policy
        and the final head at the start of the update, `PROX_FINAL_LOGITS`, as the proximal one), so the encoder,
        blocks, final head, graph and gates learn from every step whatever depth acted; and the exit head's own,
        on the steps it acted (its ratio to itself). Steps at full depth give the main term only.
        """
        n, a = module.n_agents, module.n_actions
        out: PolicyOutput = fwd_out[POLICY_OUTPUT]
        old_logits = module.dist_inputs(batch[Columns.ACTION_DIST_INPUTS])  # (B, N, W), the behaviour policy
        prox = batch.get(PROX_LOGITS) if self._decoupled else None
        prox = None if prox is None else module.dist_inputs(prox)
        actions, advantages = batch[Columns.ACTIONS], batch[Postprocessing.ADVANTAGES]
        dims_mask = batch[Columns.OBS]["action_mask"] if module.continuous else None
        gates = None
        if GATE_OPEN in batch and out.gate_logit is not None:
            gates = GateTerms(
                decision=batch[GATE_OPEN],
                logit=out.gate_logit,
                old_logit=batch[GATE_LOGIT],
                prox_logit=batch.get(PROX_GATE_LOGITS),
            )
        recorded = batch.get(EXIT_DEPTH) if module.acts_with_exits else None
        if recorded is None or out.exits is None:
            logits = module.dist_inputs(fwd_out[Columns.ACTION_DIST_INPUTS])  # (B, N, W)
            return ppo_team_loss(
                logits,
                old_logits,
                actions,
                advantages,
                weight,
                config.clip_param,
                prox_logits=prox,
                gates=gates,
                **({} if dims_mask is None else {"dims_mask": dims_mask}),  # continuous actions only
            )
        terms = ppo_team_loss(
            out.exits.final_logits,
            old_logits,
            actions,
            advantages,
            weight,
            config.clip_param,
            prox_logits=batch[PROX_FINAL_LOGITS].view(-1, n, a),
            gates=gates,
        )
        early = (recorded < out.exits.head_logits.shape[1]).to(weight.dtype).unsqueeze(-1) * weight  # (B, N)
        exit_terms = ppo_team_loss(
            out.logits, old_logits, actions, advantages, early, config.clip_param, prox_logits=prox
        )
        terms["policy_loss"] = terms["policy_loss"] + exit_terms["policy_loss"]
        return terms

    def _log_loss_stats(
        self,
        module_id: ModuleID,
        module: CommFormerRLModule,
        batch: dict[str, Any],
        out: PolicyOutput,
        policy: dict[str, Tensor],
        value_loss: Tensor,
        terms: dict[str, Tensor],
        exits: tuple[Tensor, dict[str, Tensor]] | None,
        weight: Tensor,
    ) -> None:
        """Every statistic of one loss computation: the named terms, PPO's diagnostics, the gates', the MoE
        heads', the exits' and the step counters."""
        receivers = weight.sum().clamp(min=1.0)
        stats = {
            **{name: term.detach() for name, term in terms.items()},
            POLICY_LOSS_KEY: policy["policy_loss"],
            VF_LOSS_KEY: value_loss,
            ENTROPY_KEY: policy["entropy"],
            "approx_kl": policy["approx_kl"],
            "clip_fraction": policy["clip_fraction"],
            **({"gate_clipped_fraction": policy["gate_clipped_fraction"]} if "gate_clipped_fraction" in policy else {}),
            "comm_cost": out.comm_cost,
            "aux_loss": out.aux_loss,
            # The decisions acted on: sampled while exploring, so this is the rollouts' rate.
            "gate_open_rate": (out.gate_open * weight).sum() / receivers,
            "messages_per_step": out.messages.mean(),
            "value_norm_mean": module.value_norm.mean_var()[0],
            "value_norm_std": module.value_norm.mean_var()[1].sqrt(),
        }
        if out.gate_logit is not None:
            stats["gate_prob_mean"] = (out.gate_prob * weight).sum() / receivers
            stats["gate_greedy_open_rate"] = ((out.gate_logit > 0).to(weight.dtype) * weight).sum() / receivers
        if exits is not None:
            stats.update(exits[1])
            recorded = batch.get(EXIT_DEPTH)
            if recorded is not None and module.acts_with_exits:
                steps = weight.amax(-1)  # (B,) steps that count
                stats["exit_rollout_depth_mean"] = (recorded.to(steps.dtype) * steps).sum() / steps.sum().clamp(min=1.0)
        for name, moe in out.moe.items():
            moe_stats = {"usage_entropy": moe.usage_entropy, "balance_loss": moe.balance_loss, "z_loss": moe.z_loss}
            moe_stats.update({f"usage_{i}": u for i, u in enumerate(moe.usage)})
            stats.update({f"moe_{name}_{k}": v for k, v in moe_stats.items()})
        self.metrics.log_dict(stats, key=module_id, window=1)
        # compute_gradients runs right after this loss, so the step about to be taken is this one. Data-parallel
        # Learners take the same steps and RLlib sums their metrics: each counts its share.
        share = 1.0 / max(self.config.num_learners, 1)
        self.metrics.log_value((module_id, "graph_steps"), float(self.is_graph_step()) * share, reduce="sum")
        self.metrics.log_value((module_id, "gradient_steps"), share, reduce="sum")

    # -- state ----------------------------------------------------------------------------------------------------

    @override(PPOTorchLearner)
    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["commformer_grad_steps"] = self._grad_steps
        return state

    @override(PPOTorchLearner)
    def set_state(self, state: dict[str, Any]) -> None:
        state = dict(state)
        self._grad_steps = int(state.pop("commformer_grad_steps", self._grad_steps))
        super().set_state(state)
        self._arm_graph_noise()
