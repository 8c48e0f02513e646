"""The bi-level schedule inside the real RLlib learner: which parameters each level moves, and PPO consistency.

Each case runs one real training iteration (local EnvRunner + local Learner) on the signal env.
"""

from __future__ import annotations

import pytest
import torch

from agents.build import build_ppo_config, probe_env
from agents.config import load_config
from tests.agents.iteration import Params, one_iteration

BASE = [
    "training.train_batch_size=256",
    "training.minibatch_size=128",
    "training.num_epochs=2",  # 4 gradient steps per iteration
    "model.embed_dim=16",
    "resources.num_envs_per_env_runner=4",
]


def _one_iteration(overrides: list[str]) -> tuple[Params, Params, dict]:
    return one_iteration([*BASE, *overrides])


def _moved(before, after, name):
    return not torch.equal(before[name], after[name])


def test_only_graph_steps_move_only_the_graph(ray_session):
    before, after, metrics = _one_iteration(["training.graph_every=1"])
    assert metrics["graph_steps"] == metrics["gradient_steps"] >= 4
    assert _moved(before, after, "trunk.graph.logits")
    assert not any(_moved(before, after, k) for k in before if k != "trunk.graph.logits")


def test_only_model_steps_leave_the_graph_alone(ray_session):
    before, after, metrics = _one_iteration(["training.graph_every=1000"])
    assert metrics["graph_steps"] == 0 and metrics["gradient_steps"] >= 4
    assert not _moved(before, after, "trunk.graph.logits")
    assert all(_moved(before, after, k) for k in ("trunk.blocks.0.attn.qkv.weight", "policy_head.mlp.hidden.weight"))


def test_rollout_and_update_agree_on_the_policy(ray_session, monkeypatch):
    """Before the first gradient step the learner recomputes exactly the rollout's logits (PPO ratio 1).

    A graph, gate or mask that differed between the EnvRunner and the Learner would show up here.
    """
    import agents.learner

    seen, gate_seen, sampled = [], [], []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        valid = weight.bool()  # (B, N): alive agents at real (non-bootstrap) steps
        seen.append(float((logits - old_logits).abs()[valid].max()))
        assert gates is not None  # signal.yaml learns gates: the rollout sampled and recorded them
        gate_seen.append(float((gates.logit - gates.old_logit).abs()[valid].max()))
        sampled.append(float(gates.decision[valid].mean()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    # Gates at p = sigmoid(0.5) = 0.62: the greedy decision is "open", so a closed decision in the batch was drawn.
    _one_iteration(["training.graph_every=1000", "model.gates.init_bias=0.5"])
    assert len(seen) >= 2
    assert seen[0] == 0.0 and gate_seen[0] == 0.0  # bit-identical before any update, gates included
    assert seen[-1] > 0.0 and gate_seen[-1] > 0.0  # and the check can see a difference once the policy has moved
    assert 0.4 < sampled[0] < 0.85  # decisions were sampled (greedy would be all open) and replayed


def test_learner_threads_apply_to_the_update_only(ray_session, monkeypatch):
    """resources.learner_threads: every gradient step computes with that many torch threads, the process's
    own setting is back after the update, and the first recomputation still matches the rollout's logits
    (to rounding: the rollout computed them with one thread)."""
    import agents.learner

    threads, diffs = [], []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        threads.append(torch.get_num_threads())
        diffs.append(float((logits - old_logits).abs()[weight.bool()].max()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    before = torch.get_num_threads()
    _one_iteration(["training.graph_every=1000", f"resources.learner_threads={before + 1}"])
    assert torch.get_num_threads() == before
    assert len(threads) >= 4 and set(threads) == {before + 1}
    assert diffs[0] < 1e-5


def test_freeze_stops_graph_steps(ray_session):
    before, after, metrics = _one_iteration(["training.graph_every=1", "training.graph_freeze_fraction=0.0"])
    assert metrics["graph_steps"] == 0
    assert not _moved(before, after, "trunk.graph.logits")


def test_moe_temperature_anneals_between_iterations_without_breaking_ppo_consistency(ray_session, monkeypatch):
    """tau changes after each update and reaches the EnvRunner with the weights: in every iteration the
    learner's first recomputation still equals the rollout's logits exactly."""
    import agents.learner

    first_diffs: list[float] = []
    calls = {"n": 0}
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        calls["n"] += 1
        if calls["n"] in (1, 5):  # the first gradient step of iteration 1 and of iteration 2 (4 steps each)
            first_diffs.append(float((logits - old_logits).abs()[weight.bool()].max()))
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    config = load_config(
        "configs/signal.yaml",
        [
            *BASE,
            "training.graph_every=1000",
            "model.head=moe",
            "model.moe.gate=dense_to_sparse",
            "model.moe.tau_start=1.0",
            "model.moe.tau_end=0.01",
            "stop.env_steps=512",
        ],
    )
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        taus = []
        for _ in range(2):
            metrics = algo.train()["learners"]["default_policy"]
            assert metrics["gradient_steps"] == 4  # keeps the call indices above honest
            taus.append(metrics["moe_tau"])
        runner_tau = float(algo.env_runner.module.policy.policy_head.moe.tau)
    finally:
        algo.stop()
    assert taus[0] > taus[1] >= 0.01 and runner_tau == pytest.approx(taus[1])
    assert first_diffs == [0.0, 0.0]


@pytest.mark.parametrize("value_norm", [True, False])
def test_value_norm_switch(ray_session, value_norm):
    """training.value_norm=false leaves the statistics at the identity; true tracks the returns."""
    _, _, metrics = _one_iteration([f"training.value_norm={str(value_norm).lower()}"])
    if value_norm:
        assert metrics["value_norm_mean"] > 0.5  # signal-env returns are positive
    else:
        assert metrics["value_norm_mean"] == 0.0 and metrics["value_norm_std"] == 1.0


def test_non_finite_loss_skips_the_update_entirely(ray_session, monkeypatch):
    """A NaN in the loss moves no parameter and no Adam moment, and every skipped step is counted."""
    import agents.learner

    real = agents.learner.ppo_team_loss
    calls = []

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) % 2 == 1:  # steps 1, 3, ... are NaN
            terms["policy_loss"] = terms["policy_loss"] * float("nan")
        return terms

    monkeypatch.setattr(agents.learner, "ppo_team_loss", poisoned)
    before, after, metrics = _one_iteration(["training.graph_every=1000"])
    assert metrics["gradient_steps"] >= 4
    assert metrics["skipped_updates"] == len(calls) - len(calls) // 2  # the odd steps
    assert all(torch.isfinite(v).all() for v in after.values())  # no NaN leaked into the weights
    assert _moved(before, after, "policy_head.mlp.hidden.weight")  # the finite steps still learned


def test_all_steps_non_finite_leaves_the_policy_untouched(ray_session, monkeypatch):
    import agents.learner

    real = agents.learner.ppo_team_loss

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["policy_loss"] = terms["policy_loss"] * float("inf")
        return terms

    monkeypatch.setattr(agents.learner, "ppo_team_loss", poisoned)
    before, after, metrics = _one_iteration(["training.graph_every=2"])
    assert metrics["skipped_updates"] == metrics["gradient_steps"] >= 4
    assert not any(_moved(before, after, k) for k in before)


def test_minibatches_hold_only_real_steps(ray_session, monkeypatch):
    """The learner trains on exactly the sampled steps: no artificial bootstrap rows (so no loss mask), and
    `num_epochs` x (train batch / minibatch) gradient steps. With those rows an epoch of 256 sampled steps
    would need a third minibatch (4 envs cut at least 4 episode chunks, one extra row each)."""
    import agents.learner

    rows, masks = [], []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        rows.append(logits.shape[0])
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    real_loss = agents.learner.CommFormerPPOLearner.compute_loss_for_module

    def loss(self, *, module_id, config, batch, fwd_out):
        masks.append(batch.get("loss_mask"))
        return real_loss(self, module_id=module_id, config=config, batch=batch, fwd_out=fwd_out)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    monkeypatch.setattr(agents.learner.CommFormerPPOLearner, "compute_loss_for_module", loss)
    _, _, metrics = _one_iteration(["training.graph_every=1000"])
    assert rows == [128] * 4 and metrics["gradient_steps"] == 4
    assert masks == [None] * 4


def test_lr_and_entropy_anneal_linearly_over_the_run(ray_session):
    """training.lr_end / entropy_coeff_end: after 256 of 512 env steps both are half-way; the graph's own
    learning rate does not move."""
    config = load_config(
        "configs/signal.yaml",
        [
            *BASE,
            "training.lr=0.01",
            "training.lr_end=0.0",
            "training.entropy_coeff=0.02",
            "training.entropy_coeff_end=0.0",
            "training.graph_lr=0.003",
            "stop.env_steps=512",
        ],
    )
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        algo.train()
        learner = algo.learner_group._learner
        lrs = {name: opt.param_groups[0]["lr"] for name, opt in learner.get_optimizers_for_module("default_policy")}
        entropy = float(learner.entropy_coeff_schedulers_per_module["default_policy"].get_current_value())
    finally:
        algo.stop()
    assert lrs["model"] == pytest.approx(0.005) and lrs["graph"] == pytest.approx(0.003)
    assert entropy == pytest.approx(0.01)


def test_an_overshooting_batch_takes_no_extra_minibatch(ray_session, monkeypatch):
    """4 envs sample 252 steps for train_batch_size=250: still 2 epochs x 2 minibatches of 125 (RLlib alone
    would take a fifth to show the last 2 rows a second time)."""
    import agents.learner

    rows = []
    real = agents.learner.ppo_team_loss

    def recording(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=None, gates=None):
        rows.append(logits.shape[0])
        return real(logits, old_logits, actions, advantages, weight, clip_param, prox_logits=prox_logits, gates=gates)

    monkeypatch.setattr(agents.learner, "ppo_team_loss", recording)
    _, _, metrics = _one_iteration(
        ["training.graph_every=1000", "training.train_batch_size=250", "training.minibatch_size=125"]
    )
    assert rows == [125] * 4 and metrics["gradient_steps"] == 4


@pytest.mark.parametrize("gumbel", [True, False])
def test_gumbel_noise_and_probes_reach_the_graph_in_graph_steps_only(ray_session, monkeypatch, gumbel):
    """model.graph.gumbel: the graph's forward inside the learner's gradient steps receives the flag on the
    upper-level steps (every 2nd here) and only there; rollouts and the value forward never do. The same steps, and
    only they, let a gathered graph draw senders to assess (model.graph.probes), whatever the noise."""
    from commformer.graph import CommGraph

    calls: list[tuple[bool, bool, bool]] = []  # (gumbel, probes, with autograd) of every graph the trunk takes
    real = CommGraph.senders

    def recording(self, gumbel=False, generator=None, probes=True):
        calls.append((gumbel, probes, torch.is_grad_enabled()))
        return real(self, gumbel=gumbel, generator=generator, probes=probes)

    monkeypatch.setattr(CommGraph, "senders", recording)
    _, _, metrics = _one_iteration(["training.graph_every=2", f"model.graph.gumbel={str(gumbel).lower()}"])
    steps = [(noise, probes) for noise, probes, grad in calls if grad]  # the learner's forwards, one per step
    assert len(steps) == metrics["gradient_steps"] == 4 and metrics["graph_steps"] == 2
    assert [noise for noise, _ in steps] == ([False, True, False, True] if gumbel else [False] * 4)
    assert [probes for _, probes in steps] == [False, True, False, True]
    assert not any(noise for noise, _, grad in calls if not grad)  # rollouts and GAE values: no noise


def test_the_moe_auxiliary_losses_are_part_of_the_training_loss(ray_session, monkeypatch):
    """model.moe.balance_coeff / z_coeff act through the loss: a NaN planted in the MoE heads' auxiliary loss
    must make every update non-finite (all skipped). When the learner left the auxiliary loss out, none was."""
    import dataclasses

    from commformer.layers.moe import MoEHead

    real = MoEHead.forward

    def planted(self, x):
        out = real(self, x)
        return dataclasses.replace(out, aux_loss=out.aux_loss * float("nan")) if torch.is_grad_enabled() else out

    monkeypatch.setattr(MoEHead, "forward", planted)
    before, after, metrics = _one_iteration(["training.graph_every=1000", "model.head=moe"])
    assert metrics["skipped_updates"] == metrics["gradient_steps"] >= 4
    assert not any(_moved(before, after, k) for k in before)


def test_the_moe_auxiliary_loss_is_logged_and_positive(ray_session):
    _, _, metrics = _one_iteration(["training.graph_every=1000", "model.head=moe", "model.moe.balance_coeff=0.5"])
    assert metrics["aux_loss"] > 0.5 * 0.9  # the balance loss is >= 1 (E * sum f_i P_i, uniform at best)


def test_the_frozen_random_graph_arm_never_changes_its_graph(ray_session):
    """The communication benchmark's `random` arm: a seeded random graph (`model.graph.init=random`) frozen from the
    start takes no graph step, even where every step would be one (`graph_every=1`), while the policy learns."""
    overrides = ["training.graph_every=1", "model.graph.init=random", "training.graph_freeze_fraction=0.0"]
    overrides += ["env.options.n_agents=5", "model.graph.k=2"]
    before, after, metrics = _one_iteration(overrides)
    assert metrics["graph_steps"] == 0 and metrics["gradient_steps"] >= 4
    assert torch.equal(before["trunk.graph.logits"], after["trunk.graph.logits"])
    assert not torch.equal(before["trunk.graph.logits"], torch.ones(5, 5))  # the random start, not the uniform one
    assert _moved(before, after, "policy_head.mlp.hidden.weight")


def test_with_a_switch_margin_the_learner_settles_the_graph_after_graph_steps_and_runners_act_on_it(
    ray_session, monkeypatch
):
    """model.graph.switch_margin: `settle` runs after every upper-level step and only then, and the senders it
    holds reach the EnvRunner with the weights (the rollout and the update act on one graph)."""
    from commformer.graph import CommGraph

    settled: list[int] = []
    real = CommGraph.settle

    def recording(self):
        swaps = real(self)
        settled.append(swaps)
        return swaps

    monkeypatch.setattr(CommGraph, "settle", recording)
    # A margin far below what a few Adam steps move, from the all-equal start: the held senders must change.
    config = load_config("configs/signal.yaml", [*BASE, "training.graph_every=2", "model.graph.switch_margin=1e-6"])
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        learner = algo.learner_group._learner.module["default_policy"].policy.trunk.graph
        initial = learner.held.clone()
        for _ in range(3):
            metrics = algo.train()["learners"]["default_policy"]
        runner = algo.env_runner.module.policy.trunk.graph
        assert len(settled) == 3 * 2 and metrics["graph_steps"] == 2  # two of the four steps, every iteration
        assert sum(settled) > 0 and not torch.equal(learner.held, initial)
        assert torch.equal(runner.held, learner.held)
        assert torch.equal(runner.hard(), learner.hard())
    finally:
        algo.stop()


def test_the_learner_ends_the_graph_warm_up_after_the_fraction_and_runners_act_on_it(ray_session):
    """model.graph.warmup_fraction: the learner and the EnvRunner hear everyone, every gate open, until the update
    that crosses the fraction of stop.env_steps, then both hear the top-k through the gates (the flag is sent with
    the weights)."""
    overrides = [*BASE, "stop.env_steps=1000", "model.graph.warmup_fraction=0.4", "training.graph_every=2"]
    config = load_config("configs/signal.yaml", overrides)
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        trunk = algo.learner_group._learner.module["default_policy"].policy.trunk
        learner, runner = trunk.graph, algo.env_runner.module.policy.trunk.graph
        n = learner.n_agents
        assert learner.hears_all and runner.hears_all
        assert trunk.gate is not None and not algo.env_runner.module.samples_gates
        gate = [p.detach().clone() for p in trunk.gate.parameters()]
        first = algo.train()
        assert first["env_runners"]["num_env_steps_sampled_lifetime"] < 400
        assert learner.hears_all and torch.equal(runner.hard(), torch.ones(n, n))
        stats = first["learners"]["default_policy"]
        assert stats["graph_hears_all"] == 1.0 and stats["gate_open_rate"] == 1.0
        assert "gate_greedy_open_rate" not in stats  # no gate decided anything
        assert all(torch.equal(p, q) for p, q in zip(trunk.gate.parameters(), gate, strict=True))  # nor learned
        logits = learner.logits.detach().clone()
        assert not torch.equal(logits, torch.ones(n, n))  # the graph steps moved the logits in the warm-up
        for _ in range(3):
            result = algo.train()
        assert result["learners"]["default_policy"]["graph_hears_all"] == 0.0
        assert not learner.hears_all and not runner.hears_all
        assert algo.env_runner.module.samples_gates and "gate_greedy_open_rate" in result["learners"]["default_policy"]
        assert not all(torch.equal(p, q) for p, q in zip(trunk.gate.parameters(), gate, strict=True))
        assert torch.equal(runner.hard(), learner.hard()) and learner.hard().sum() == n * (1 + learner.k)
    finally:
        algo.stop()
