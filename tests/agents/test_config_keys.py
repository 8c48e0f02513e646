"""Every documented config key reaches the code that uses it.

A key that is validated and documented but changes nothing is a silent lie: a user sweeps it and measures noise.
One shipped before (`model.graph.gumbel` was documented, but the RLModule never passed it to the policy). This
file makes that impossible to repeat:

1. `leaf_keys()` walks the typed `ExperimentConfig` tree, so a new field is picked up without anyone listing it.
2. `CASES` maps every leaf key to a changed value and a probe; `test_the_table_names_every_key_and_only_keys`
   fails when a key has no row (or a row names a key that no longer exists). The only keys without a row are in
   `NOT_SETTABLE` / `OUT_OF_SCOPE`, each with its reason.
3. `test_the_key_changes_what_its_consumer_does` loads the experiment twice as the driver does (the defaults plus
   overrides, `load_config(None, overrides)`), with and without the change, runs the probe on both and asserts
   that the observations differ, and that the unchanged experiment observed twice does not (so the difference is
   the key's, not noise).

Probes observe the consumer through the real path from the config, cheapest first (the `level` of a probe):

- ``module``: the `CommFormerRLModule` that a Learner builds from `build_ppo_config(config)` (config -> plain data
  -> RLModuleSpec -> typed config again -> policy): its parameters, `forward_train` outputs (as the learner calls
  it) and `forward_exploration` outputs (as an EnvRunner calls it).
- ``learner``: the real `CommFormerPPOLearner` from `build_ppo_config(config).build_learner(...)` (no Ray needed):
  its optimizers, schedules, batch builder, and one real gradient step (`_uncompiled_update`: forward_train, loss,
  level selection, clipping, Adam) on a batch recorded from the module's own exploring forward.
- ``rllib``: a field of the `AlgorithmConfig` that `build_ppo_config` returns, for settings RLlib itself consumes
  (sampling, resources, fault tolerance).
- ``env``: the team env RLlib's creator builds from that AlgorithmConfig's `env_config`.
- ``driver``: the training driver's own code (agents/train.py): `prepare_run`, the start of `train` on a joined
  cluster, and the iteration loop `_Run.loop` around a stand-in algorithm.

The learner's own settings are checked once more as a set: every field of the `LearnerSettings` that
`build_ppo_config` hands over is read by `CommFormerPPOLearner` (`test_the_learner_reads_every_learner_setting`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import os
import tempfile
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import gymnasium as gym
import numpy as np
import pytest
import torch
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from torch import Tensor

import agents.train
from agents import checkpoints as ckpt
from agents.algorithm import CommFormerPPOConfig, LearnerSettings
from agents.build import build_ppo_config, env_config_dict, make_env_from_dict, probe_env
from agents.config import ExperimentConfig, load_config, save_config, to_dict
from agents.faults import FaultLimitError
from agents.learner import GATES_OPTIMIZER, GRAPH_OPTIMIZER, MODEL_OPTIMIZER, CommFormerPPOLearner
from agents.rl_module import POLICY_OUTPUT, CommFormerRLModule, build_policy, team_dims
from agents.team_batch import TeamPPOBatch
from agents.tensorboard import RunLogger

BASE: tuple[str, ...] = ("model.embed_dim=16", "run.name=keys")
"""Shared by both sides of every comparison: a small model (fast), and a fixed run name (the default one holds a
timestamp, which would differ between two loads a second apart). The base experiment is the default one:
mpe_spread with 3 agents, whose env has a global state."""

OUT_OF_SCOPE: dict[str, str] = {
    "env.options": "each env's own option dataclass (envs/registry.py), a different tree per env.name; the envs' "
    "tests (tests/envs) cover what each option does",
}
NOT_SETTABLE: dict[str, str] = {
    "model.orchid.max_len": "derived: ModelConfig sets it from model.history (the encoder's window) and refuses any "
    "other explicit value (tests/agents/test_config.py::test_the_env_window_is_derived_from_the_model)",
}


# --------------------------------------------------------------------------------------------------------------
# The keys.


def leaf_keys(cls: type = ExperimentConfig, prefix: str = "") -> list[str]:
    """Dotted names of every leaf of the config tree rooted at dataclass `cls` (nested dataclasses are walked)."""
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            keys += leaf_keys(hint, f"{key}.")
        else:
            keys.append(key)
    return keys


def value_at(config: ExperimentConfig, key: str) -> Any:
    node: Any = to_dict(config)
    for part in key.split("."):
        node = node[part]
    return node


# --------------------------------------------------------------------------------------------------------------
# One side of a comparison, and what is built from it.


_SPACES: dict[str, tuple[gym.spaces.Dict, gym.spaces.MultiDiscrete]] = {}
"""The team env's spaces by the env description RLlib receives (`env_config_dict`): each env is built once."""


@dataclass(frozen=True)
class Subject:
    """The experiment the driver would load with these overrides on top of the defaults."""

    overrides: tuple[str, ...]

    @functools.cached_property
    def config(self) -> ExperimentConfig:
        return load_config(None, list(self.overrides))

    def ppo(self) -> CommFormerPPOConfig:
        return build_ppo_config(self.config)

    def spaces(self) -> tuple[gym.spaces.Dict, gym.spaces.MultiDiscrete]:
        """The team env's spaces, as `probe_env` reads them before training."""
        key = json.dumps(env_config_dict(self.config), sort_keys=True)
        if key not in _SPACES:
            spaces = probe_env(self.config)
            _SPACES[key] = (spaces.observation_space, spaces.action_space)
        return _SPACES[key]

    def learner(self) -> CommFormerPPOLearner:
        """A fresh Learner, as a LearnerGroup builds its local one (it seeds torch with run.seed while building)."""
        torch.manual_seed(0)
        learner = self.ppo().build_learner(spaces={DEFAULT_MODULE_ID: self.spaces()})
        assert isinstance(learner, CommFormerPPOLearner)
        return learner


def _module(learner: CommFormerPPOLearner) -> CommFormerRLModule:
    module = learner.module[DEFAULT_MODULE_ID].unwrapped()
    assert isinstance(module, CommFormerRLModule)
    return module


def _observations(module: CommFormerRLModule, rows: int = 12) -> dict[str, Tensor]:
    """Fixed team observations for the module's spaces (every action available, every agent alive)."""
    g = torch.Generator().manual_seed(0)
    obs = {}
    assert isinstance(module.observation_space, gym.spaces.Dict)
    for name, space in module.observation_space.spaces.items():
        shape = (rows, *(space.shape or ()))
        obs[name] = torch.ones(shape) if name in ("action_mask", "alive") else torch.randn(shape, generator=g)
    return obs


def _train_batch(module: CommFormerRLModule) -> dict[str, Any]:
    """A batch as the learner receives it: the module's exploring forward records what an EnvRunner records (the
    action logits, the sampled gate decisions and their logits, exit depths), then the behaviour logits are moved
    as if the batch were some updates old, so that PPO ratios leave 1 and the clip acts."""
    obs = _observations(module)
    torch.manual_seed(0)  # the gates' draws
    with torch.no_grad():
        recorded = dict(module.forward_exploration({Columns.OBS: obs}))
    g = torch.Generator().manual_seed(1)
    rows, n, a = obs["obs"].shape[0], module.n_agents, module.n_actions
    logits = recorded[Columns.ACTION_DIST_INPUTS]
    recorded[Columns.ACTION_DIST_INPUTS] = logits + 0.5 * torch.randn(logits.shape, generator=g)
    return {
        **recorded,
        Columns.OBS: obs,
        Columns.ACTIONS: (
            torch.randn(rows, n, a, generator=g) if module.continuous else torch.randint(0, a, (rows, n), generator=g)
        ),
        Postprocessing.ADVANTAGES: torch.randn(rows, generator=g),
        Postprocessing.VALUE_TARGETS: 5.0 * torch.randn(rows, generator=g),
    }


def _step(learner: CommFormerPPOLearner, batch: dict[str, Any]) -> Tensor:
    """One real gradient step of the learner on `batch`; returns the total loss.

    `_uncompiled_update` is what RLlib's `Learner.update` runs per minibatch (forward_train, compute_losses,
    compute_gradients, postprocess_gradients, apply_gradients), without the connector pipeline, which needs
    episodes: the batch stands in for its output."""
    torch.manual_seed(0)  # Gumbel noise of an upper-level step
    _, losses, _ = learner._uncompiled_update({DEFAULT_MODULE_ID: batch})
    return losses[DEFAULT_MODULE_ID].detach()


def _metric(learner: CommFormerPPOLearner, name: str) -> float:
    """A value the learner logged at its last step (some are logged as tensors with gradient)."""
    return float(torch.as_tensor(learner.metrics.peek((DEFAULT_MODULE_ID, name))).detach())


# --------------------------------------------------------------------------------------------------------------
# Probes: what a key should change, observed at its consumer.


@dataclass(frozen=True)
class Probe:
    level: str
    """module, learner, rllib, env or driver (module docstring)."""
    what: str
    """What is observed, for the reader and for failure messages."""
    observe: Callable[[Subject], Any]

    def __str__(self) -> str:
        return f"{self.level}: {self.what}"


def parameters() -> Probe:
    """For keys that decide what is built."""

    def observe(subject: Subject) -> Any:
        policy = _module(subject.learner()).policy
        return {name: tuple(p.shape) for name, p in policy.named_parameters()}

    return Probe("module", "the policy's parameter names and shapes", observe)


def initial_weights() -> Probe:
    """RLlib's Learner seeds torch with the AlgorithmConfig's seed before it builds the module."""

    def observe(subject: Subject) -> Any:
        return dict(_module(subject.learner()).policy.named_parameters())

    return Probe("learner", "the initial weights of the Learner's policy", observe)


def forward(field: str) -> Probe:
    """A field of the `PolicyOutput` of the module's training forward (`forward_train`, what the learner calls);
    dotted names reach into it (`moe.policy.weights`, `exits.gate_logits`)."""

    def observe(subject: Subject) -> Any:
        module = _module(subject.learner())
        batch = _train_batch(module)
        with torch.no_grad():
            node: Any = module.forward_train(batch)[POLICY_OUTPUT]
        for part in field.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node

    return Probe("module", f"forward_train: PolicyOutput.{field}", observe)


def exploration() -> Probe:
    """The acting path of a training rollout (`CommFormerPolicy.act` behind it)."""

    def observe(subject: Subject) -> Any:
        module = _module(subject.learner())
        torch.manual_seed(0)
        with torch.no_grad():
            return dict(module.forward_exploration({Columns.OBS: _observations(module)}))

    return Probe("module", "forward_exploration outputs (what an EnvRunner records)", observe)


def backbone_gradient_of_exit_heads() -> Probe:
    def observe(subject: Subject) -> Any:
        module = _module(subject.learner())
        exits = module.forward_train(_train_batch(module))[POLICY_OUTPUT].exits
        weights = torch.randn(exits.head_logits.shape, generator=torch.Generator().manual_seed(2))
        (exits.head_logits * weights).sum().backward()  # any function of the exits' logits alone
        assert module.policy.encoder.obs_embed is not None  # the mlp encoder: Sequential(LayerNorm, Linear, activation)
        grad = module.policy.encoder.obs_embed[1].weight.grad
        return torch.zeros(()) if grad is None else grad

    return Probe("module", "gradient of the encoder from a function of the exit heads' logits", observe)


def optimizer(name: str, setting: str = "lr") -> Probe:
    """A setting of one of the optimizers the Learner registered (model, graph, gates)."""

    def observe(subject: Subject) -> Any:
        learner = subject.learner()
        return learner.get_optimizer(DEFAULT_MODULE_ID, name).param_groups[0][setting]

    return Probe("learner", f"Adam '{name}' {setting}", observe)


def schedules(env_steps: int) -> Probe:
    """Where the learner's schedules stand once `env_steps` have been sampled (RLlib's hooks around an update)."""

    def observe(subject: Subject) -> Any:
        learner = subject.learner()
        timesteps = {NUM_ENV_STEPS_SAMPLED_LIFETIME: env_steps}
        learner.before_gradient_based_update(timesteps=timesteps)
        learner.after_gradient_based_update(timesteps=timesteps)
        policy = _module(learner).policy
        return {
            "lr": learner.get_optimizer(DEFAULT_MODULE_ID, MODEL_OPTIMIZER).param_groups[0]["lr"],
            "entropy_coeff": learner.entropy_coeff_schedulers_per_module[DEFAULT_MODULE_ID].get_current_value(),
            "moe_tau": [float(head.tau) for head in policy.moe_heads().values()],
            "graph_step": learner.is_graph_step(),
        }

    return Probe("learner", f"lr, entropy coefficient, MoE tau and graph level after {env_steps:,} env steps", observe)


def update(observe_learner: Callable[[CommFormerPPOLearner, Tensor], Any], what: str) -> Probe:
    """One real gradient step on the recorded batch, then `observe_learner(learner, total_loss)`."""

    def observe(subject: Subject) -> Any:
        learner = subject.learner()
        loss = _step(learner, _train_batch(_module(learner)))
        return observe_learner(learner, loss)

    return Probe("learner", f"one gradient step: {what}", observe)


def total_loss() -> Probe:
    return update(lambda learner, loss: loss, "the total loss")


def metric(*names: str) -> Probe:
    return update(lambda learner, loss: {name: _metric(learner, name) for name in names}, f"metrics {', '.join(names)}")


def clipped_gradients() -> Probe:
    """After the step the parameters hold the gradients the optimizers stepped with, i.e. after clipping."""

    def norm(learner: CommFormerPPOLearner, loss: Tensor) -> Any:
        grads = [p.grad for p in _module(learner).policy.model_parameters() if p.grad is not None]
        return torch.nn.utils.get_total_norm(grads)

    return update(norm, "norm of the lower level's gradients as Adam received them")


def gradient(prefix: str) -> Probe:
    """The gradients the step applied to the parameters named `prefix`* (those it left alone hold none)."""

    def grads(learner: CommFormerPPOLearner, loss: Tensor) -> Any:
        named = _module(learner).policy.named_parameters()
        return {name: p.grad for name, p in named if name.startswith(prefix) and p.grad is not None}

    return update(grads, f"gradients of {prefix}*")


def steps(count: int, observe_step: Callable[[CommFormerPPOLearner], Any], what: str) -> Probe:
    """`count` real gradient steps; `observe_step(learner)` after each."""

    def observe(subject: Subject) -> Any:
        learner = subject.learner()
        batch = _train_batch(_module(learner))
        seen = []
        for _ in range(count):
            _step(learner, batch)
            seen.append(observe_step(learner))
        return seen

    return Probe("learner", f"{count} gradient steps: {what}", observe)


def _gate_weight(learner: CommFormerPPOLearner) -> float:
    gate = _module(learner).policy.trunk.gate
    assert gate is not None
    return gate.weight


def batch_builder() -> Probe:
    """The learner connector that computes GAE and the proximal logits (it replaces RLlib's pipeline)."""

    def observe(subject: Subject) -> Any:
        pipeline = subject.learner()._learner_connector
        assert pipeline is not None
        (builder,) = (c for c in pipeline.connectors if isinstance(c, TeamPPOBatch))
        return {"gamma": builder.gamma, "lambda": builder.lambda_, "proximal": builder.proximal}

    return Probe("learner", "the Learner's TeamPPOBatch (GAE gamma, lambda, proximal logits)", observe)


def update_threads() -> Probe:
    def observe(subject: Subject) -> Any:
        learner = subject.learner()
        # RLlib's own update (batch preparation and the minibatch loop) replaced by a recorder of the thread count
        # it would run with: CommFormerPPOLearner.update around it is the code under test.
        with mock.patch.object(PPOTorchLearner, "update", lambda self, *a, **k: torch.get_num_threads()):
            return learner.update()

    return Probe("learner", "torch threads during Learner.update", observe)


def rllib(*path: str) -> Probe:
    """For settings RLlib consumes itself (sampling, actors, fault tolerance): the field build_ppo_config sets."""

    def observe(subject: Subject) -> Any:
        node: Any = subject.ppo()
        for part in path:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        return node

    return Probe("rllib", f"AlgorithmConfig.{'.'.join(path)}", observe)


def env_step() -> Probe:
    def observe(subject: Subject) -> Any:
        env = make_env_from_dict(dict(subject.ppo().env_config))  # what RLlib's env creator receives
        assert isinstance(env.observation_space, gym.spaces.Dict) and isinstance(
            env.action_space, gym.spaces.MultiDiscrete
        )
        try:
            env.reset(seed=0)
            _, reward, *_ = env.step(np.zeros(len(env.action_space.nvec), dtype=np.int64))  # every agent: action 0
        finally:
            env.close()
        return {"spaces": {k: v.shape for k, v in env.observation_space.spaces.items()}, "reward": reward}

    return Probe("env", "the env built from AlgorithmConfig.env_config: spaces and one step's team reward", observe)


def run_dir() -> Probe:
    """Where a new run writes (`prepare_run` validates the experiment and names its directory; it writes nothing)."""

    def observe(subject: Subject) -> Any:
        _, path = agents.train.prepare_run(None, list(subject.overrides), None)
        return path

    return Probe("driver", "prepare_run's run directory", observe)


class _Stop(Exception):
    """Ends a driver probe once it has seen what it looks for."""


def cluster_wait() -> Probe:
    """The start of `train()` on a cluster joined through RAY_ADDRESS, up to its wait for the nodes."""

    def observe(subject: Subject) -> Any:
        waited = {}

        def record(config: ExperimentConfig, read: Any, request: Any, timeout_s: float, out: Any) -> None:
            waited["timeout_s"] = timeout_s
            raise _Stop

        # A joined cluster (RAY_ADDRESS) makes train() wait for its nodes; no Ray is started or joined here. train()
        # sets this process's thread count (patch.dict restores the environment, the `finally` torch's setting).
        threads = torch.get_num_threads()
        with (
            mock.patch.dict(os.environ, {"RAY_ADDRESS": "probe:6379"}),
            mock.patch.object(agents.train, "init_ray", return_value=False),
            mock.patch.object(agents.train, "wait_for_resources", record),
            tempfile.TemporaryDirectory() as tmp,
            pytest.raises(_Stop),
        ):
            try:
                agents.train.train(subject.config, Path(tmp) / "run", out=io.StringIO())
            finally:
                torch.set_num_threads(threads)
        return waited

    return Probe("driver", "the timeout train() waits for a joined cluster's nodes", observe)


class _StandInAlgorithm:
    """What `_Run.loop` needs of an RLlib Algorithm: each train() 'samples' one train batch, and a policy's weights.

    With `nonfinite`, every iteration reports new non-finite observations (as NaN-producing envs do)."""

    def __init__(self, config: ExperimentConfig, weights: dict[str, np.ndarray], nonfinite: bool) -> None:
        self.iteration = 0
        self.batch, self.nonfinite = config.training.train_batch_size, nonfinite
        self.learner_group = mock.Mock()
        self.learner_group.get_weights.return_value = {DEFAULT_MODULE_ID: weights}

    def train(self) -> dict[str, Any]:
        self.iteration += 1
        runners = {"num_env_steps_sampled_lifetime": self.iteration * self.batch, "episode_return_mean": 0.0}
        runners["nonfinite_obs_steps"] = float(self.iteration) if self.nonfinite else 0.0
        return {"env_runners": runners}

    def save_to_path(self, path: str) -> None:
        Path(path).mkdir(parents=True)


def training_loop(nonfinite: bool = False) -> Probe:
    """The driver's iteration loop (`_Run.loop`) with real checkpoints and a real TensorBoard logger (its graph
    images recorded instead of drawn), around an algorithm that only counts env steps."""

    def observe(subject: Subject) -> Any:
        config = subject.config
        obs_space, act_space = subject.spaces()
        dims = team_dims(obs_space, act_space)
        weights = {f"policy.{k}": v.numpy() for k, v in build_policy(config.model, dims).state_dict().items()}
        algo = _StandInAlgorithm(config, weights, nonfinite)
        images: list[int] = []
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp)
            save_config(config, path / ckpt.CONFIG)
            run = agents.train._Run(config, path, dims, algo, io.StringIO())
            stopped = None
            with mock.patch.object(RunLogger, "log_graph", lambda self, graph, env_steps: images.append(env_steps)):
                try:
                    run.loop(0)
                except FaultLimitError as err:
                    stopped = str(err).split(";")[0]
            kept = sorted(p.name for p in (path / ckpt.CHECKPOINTS).glob("iter_*"))
        return {"iterations": algo.iteration, "checkpoints": kept, "graph_images": images, "stopped": stopped}

    what = "iterations, checkpoints kept, graph images, fault stop"
    return Probe("driver", f"_Run.loop around a stand-in algorithm: {what}", observe)


# --------------------------------------------------------------------------------------------------------------
# The table.


@dataclass(frozen=True)
class Case:
    value: str
    """The changed value, as a command-line override writes it."""
    probe: Probe
    context: tuple[str, ...] = ()
    """Overrides both sides share, to put the key where it acts (e.g. MoE settings need a MoE head)."""


MOE = ("model.head=moe",)
CONTINUOUS = ("env.name=mpe2.simple_spread_v3", "env.options={N: 2, continuous_actions: true}")
ORCHID = ("model.encoder=orchid", "model.history=4")
EXITS = ("model.early_exit.enabled=true", "model.num_blocks=2")
GATE_PHASE = (*EXITS, "model.early_exit.warmup_steps=0")  # the exits' gates learn from the first step
GATHERED = ("env.name=signal", "env.options={n_agents: 32}", "model.graph.k=1")
UPPER_LEVEL = ("training.graph_every=1",)  # every gradient step is a graph step (unless the graph is frozen)
DRIVER = ("training.train_batch_size=1000", "training.minibatch_size=500", "stop.env_steps=6000")  # 6 iterations
REMOTE = ("resources.num_env_runners=1",)

CASES: dict[str, Case] = {
    # env (env.options: OUT_OF_SCOPE)
    "env.name": Case("signal", env_step()),
    # an env nobody adapted, built by a factory of PettingZoo's (mpe2's predators and prey: other spaces, rewards)
    "env.factory": Case("mpe2.simple_tag_v3:parallel_env", env_step()),
    "env.team_reward": Case("sum", env_step()),
    "env.use_state": Case("false", env_step()),
    # model: structure
    "model.embed_dim": Case("32", parameters()),
    "model.num_heads": Case("2", forward("values")),
    "model.num_blocks": Case("2", parameters()),
    "model.mlp_ratio": Case("4", parameters()),
    "model.activation": Case("relu", forward("values")),
    "model.agent_embedding": Case("false", parameters()),
    "model.use_state": Case("false", parameters()),
    "model.communicate": Case("false", forward("adjacency")),
    "model.head": Case("moe", parameters()),
    "model.value_head": Case("moe", parameters()),
    "model.encoder": Case("attention", parameters()),
    "model.history": Case("6", parameters(), ("model.encoder=attention", "model.history=4")),
    "model.decoder": Case("autoregressive", exploration()),  # the module chooses and returns the actions
    "model.decoder_blocks": Case("2", parameters(), ("model.decoder=autoregressive",)),
    # continuous actions only: mpe2's simple_spread with continuous_actions, by import path
    "model.log_std": Case("state", parameters(), CONTINUOUS),
    "model.log_std_init": Case("-1.0", forward("logits"), CONTINUOUS),
    # model.graph
    "model.graph.sparsity": Case("0.9", forward("adjacency")),
    "model.graph.k": Case("2", forward("adjacency")),
    "model.graph.init": Case("random", forward("adjacency")),
    # Consumed in upper-level steps only: the Learner arms the module's Gumbel noise, the forward passes it on.
    "model.graph.gumbel": Case("false", gradient("trunk.graph."), UPPER_LEVEL),
    "model.graph.gumbel_tau": Case("0.5", gradient("trunk.graph."), UPPER_LEVEL),
    # The graph after each of 6 graph steps from the all-equal start: the plain top-k follows the first moves of the
    # logits, a margin of 0.5 keeps the initial ring.
    "model.graph.switch_margin": Case(
        "0.5", steps(6, lambda learner: _module(learner).policy.trunk.graph.hard(), "the hard graph"), UPPER_LEVEL
    ),
    "model.graph.held_product": Case("true", gradient("trunk.graph."), UPPER_LEVEL),
    "model.graph.warmup_fraction": Case("0.5", forward("adjacency")),  # every receiver hears every sender
    # Acts where attention gathers (N >= 16 (k + 1)): 32 signal agents with one sender each.
    "model.graph.probes": Case("0", gradient("trunk.graph."), (*UPPER_LEVEL, *GATHERED)),
    # model.gates
    "model.gates.enabled": Case("false", parameters()),
    "model.gates.cost_weight": Case("0.5", forward("comm_cost")),
    "model.gates.init_bias": Case("-1.0", forward("gate_prob")),
    # The budget's weight after each of three real steps: fixed at cost_weight without a target.
    "model.gates.target_open_rate": Case("0.2", steps(3, _gate_weight, "the gates' cost weight")),
    "model.gates.budget_lr": Case(
        "0.1", steps(3, _gate_weight, "the gates' cost weight"), ("model.gates.target_open_rate=0.2",)
    ),
    # model.moe (the MoE head's settings)
    "model.moe.experts": Case("3", parameters(), MOE),
    "model.moe.gate": Case("dense_to_sparse", forward("moe.policy.weights"), MOE),
    "model.moe.k": Case("3", forward("moe.policy.weights"), MOE),
    "model.moe.tau_start": Case("2.0", forward("moe.policy.weights"), (*MOE, "model.moe.gate=dense_to_sparse")),
    "model.moe.tau_end": Case("0.5", schedules(500_000), MOE),
    "model.moe.activation": Case("tanh", forward("moe.policy.weights"), (*MOE, "model.moe.gate=activation")),
    "model.moe.hidden": Case("8", parameters(), MOE),
    "model.moe.balance_coeff": Case("0.5", forward("aux_loss"), MOE),
    "model.moe.z_coeff": Case("0.5", forward("aux_loss"), MOE),
    # model.orchid (the Orchid encoder's settings; max_len: NOT_SETTABLE)
    "model.orchid.short_kernel": Case("2", parameters(), ORCHID),
    "model.orchid.conditioning": Case("type2", parameters(), ORCHID),
    "model.orchid.cond_kernel": Case("5", parameters(), ORCHID),
    "model.orchid.filter_order": Case("8", parameters(), ORCHID),
    "model.orchid.filter_bands": Case("3", parameters(), ORCHID),
    # model.early_exit
    "model.early_exit.enabled": Case("true", parameters(), ("model.num_blocks=2",)),
    "model.early_exit.cost_weight": Case("0.0", metric("exit_target_depth_mean"), EXITS),
    # Untrained gates sit at sigmoid(-2) = 0.12: a threshold below that exits every team at depth 0.
    "model.early_exit.threshold": Case("0.1", exploration(), (*EXITS, "model.early_exit.rollout=true")),
    "model.early_exit.rollout": Case("true", exploration(), EXITS),
    "model.early_exit.distill_weight": Case("0.5", gradient("exits.heads."), EXITS),
    "model.early_exit.gate_weight": Case("0.5", gradient("exits.gates."), GATE_PHASE),
    "model.early_exit.warmup_steps": Case("0", metric("exit_phase_gates"), EXITS),
    "model.early_exit.alternate_every": Case(
        "1", steps(2, lambda learner: _metric(learner, "exit_phase_gates"), "the exits' phase"), GATE_PHASE
    ),
    "model.early_exit.backbone_grad": Case("true", backbone_gradient_of_exit_heads(), EXITS),
    "model.early_exit.gate_init_bias": Case("0.0", forward("exits.gate_logits"), EXITS),
    "model.early_exit.gate_lr": Case("0.001", optimizer(GATES_OPTIMIZER), EXITS),
    # training
    "training.train_batch_size": Case("2000", rllib("train_batch_size_per_learner")),
    "training.minibatch_size": Case("500", rllib("minibatch_size")),
    "training.num_epochs": Case("2", rllib("num_epochs")),
    "training.lr": Case("0.001", optimizer(MODEL_OPTIMIZER)),
    "training.lr_end": Case("0.0001", schedules(1_000_000)),
    "training.graph_lr": Case("0.01", optimizer(GRAPH_OPTIMIZER)),
    "training.adam_eps": Case("0.001", optimizer(MODEL_OPTIMIZER, "eps")),
    "training.grad_clip": Case("0.001", clipped_gradients()),
    "training.gamma": Case("0.9", batch_builder()),
    "training.gae_lambda": Case("0.5", batch_builder()),
    "training.clip_param": Case("0.5", metric("policy_loss", "clip_fraction")),
    "training.entropy_coeff": Case("0.5", total_loss()),
    "training.entropy_coeff_end": Case("0.0", schedules(1_000_000)),
    "training.vf_loss_coeff": Case("0.5", total_loss()),
    "training.huber_delta": Case("0.5", metric("vf_loss")),
    "training.value_norm": Case("false", metric("vf_loss", "value_norm_mean")),
    "training.graph_every": Case(
        "2", steps(6, lambda learner: _metric(learner, "graph_steps"), "graph steps so far (the learner's count)")
    ),
    "training.graph_freeze_fraction": Case("0.25", schedules(500_000), UPPER_LEVEL),
    "training.sample_ahead": Case("true", batch_builder(), REMOTE),
    # resources
    "resources.num_env_runners": Case("1", rllib("num_env_runners")),
    "resources.num_envs_per_env_runner": Case("4", rllib("num_envs_per_env_runner")),
    "resources.num_cpus_per_env_runner": Case("0.5", rllib("num_cpus_per_env_runner")),
    "resources.custom_resources_per_env_runner": Case("{rollout: 1}", rllib("custom_resources_per_env_runner"), REMOTE),
    "resources.num_learners": Case("2", rllib("num_learners")),
    "resources.num_cpus_per_learner": Case("2", rllib("num_cpus_per_learner")),
    "resources.learner_threads": Case("2", update_threads()),
    "resources.num_gpus_per_learner": Case("0.5", rllib("num_gpus_per_learner")),
    "resources.wait_for_nodes_s": Case("5", cluster_wait()),
    # faults
    "faults.restart_env_runners": Case("false", rllib("restart_failed_env_runners")),
    "faults.max_env_runner_restarts": Case("3", rllib("max_num_env_runner_restarts")),
    "faults.env_runner_restart_delay_s": Case("0.5", rllib("delay_between_env_runner_restarts_s")),
    "faults.restart_failed_envs": Case("false", rllib("restart_failed_sub_environments")),
    "faults.max_bad_iterations": Case("2", training_loop(nonfinite=True), DRIVER),
    # stop (also the end of the lr / entropy schedules and of the graph freeze; observed on the lr here)
    "stop.env_steps": Case("2000000", schedules(500_000), ("training.lr_end=0.0",)),
    # run
    "run.output_dir": Case("elsewhere", run_dir()),
    "run.name": Case("other", run_dir()),
    "run.seed": Case("1", initial_weights()),
    "run.checkpoint_every": Case("2", training_loop(), DRIVER),
    "run.keep_checkpoints": Case("1", training_loop(), (*DRIVER, "run.checkpoint_every=2")),
    "run.graph_image_every": Case("2", training_loop(), DRIVER),
}


# --------------------------------------------------------------------------------------------------------------
# The tests.


def test_the_table_names_every_key_and_only_keys() -> None:
    leaves = set(leaf_keys())
    exempt = set(OUT_OF_SCOPE) | set(NOT_SETTABLE)
    assert not set(CASES) & exempt, "a key is both in the table and exempt from it"
    assert sorted(leaves - set(CASES) - exempt) == [], "config keys without a row in CASES (add one)"
    assert sorted((set(CASES) | exempt) - leaves) == [], "rows for keys the config no longer has (remove them)"


def _differs(a: Any, b: Any) -> bool:
    """Whether two observations differ anywhere (tensors and arrays exactly, containers element by element)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return not (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return not np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b, strict=True))
    return bool(a != b)


@dataclass(frozen=True)
class _Pair:
    base: Subject
    changed: Subject


def _pair(key: str, case: Case) -> _Pair:
    base = (*BASE, *case.context)
    return _Pair(Subject(base), Subject((*base, f"{key}={case.value}")))


@pytest.mark.parametrize("key", sorted(CASES))
def test_the_key_changes_what_its_consumer_does(key: str) -> None:
    case = CASES[key]
    pair = _pair(key, case)
    assert value_at(pair.base.config, key) != value_at(pair.changed.config, key), (
        f"{key}={case.value} is already the base value (with context {case.context}); choose another value"
    )
    probe = case.probe
    before, again, after = probe.observe(pair.base), probe.observe(pair.base), probe.observe(pair.changed)
    assert not _differs(before, again), f"{probe} is not deterministic, so it cannot tell what {key} changes"
    assert _differs(before, after), f"{key}={case.value} changed nothing at {probe}: a dead key?\n{before}"


_SETTINGS_FIELDS = frozenset(field.name for field in dataclasses.fields(LearnerSettings))


@dataclasses.dataclass(frozen=True)
class _RecordedSettings(LearnerSettings):
    """LearnerSettings that record which fields are read (class-level: RLlib copies the config deeply)."""

    read: ClassVar[set[str]] = set()

    def __getattribute__(self, name: str) -> Any:
        if name in _SETTINGS_FIELDS:
            _RecordedSettings.read.add(name)
        return object.__getattribute__(self, name)


def test_the_learner_reads_every_learner_setting() -> None:
    """Each field of the LearnerSettings build_ppo_config hands the learner is read by it: while it is built
    (optimizers, batch builder) and over one update (the level schedule, the loss, the MoE schedule, the threads),
    so no setting can be handed over and then ignored."""
    subject = Subject(BASE)
    ppo = subject.ppo()
    ppo.learner = _RecordedSettings(**dataclasses.asdict(ppo.learner_settings()))
    _RecordedSettings.read = set()
    learner = ppo.build_learner(spaces={DEFAULT_MODULE_ID: subject.spaces()})
    assert isinstance(learner, CommFormerPPOLearner)
    learner.before_gradient_based_update(timesteps={})
    _step(learner, _train_batch(_module(learner)))
    learner.after_gradient_based_update(timesteps={})
    with mock.patch.object(PPOTorchLearner, "update", lambda self, *a, **k: None):
        learner.update()
    unread = _SETTINGS_FIELDS - _RecordedSettings.read
    assert not unread, f"LearnerSettings handed to the learner but never read: {sorted(unread)}"


@pytest.mark.parametrize("extra", [(), MOE, EXITS], ids=["plain", "moe", "early_exit"])
def test_the_loss_is_the_sum_of_its_logged_terms(extra: tuple[str, ...]) -> None:
    """The loss a gradient step minimises is the sum of the named terms the learner logs, and each term is its
    coefficient times the statistic it weighs: a term added to the loss but not to the terms (or the other way
    round) fails here."""
    learner = Subject((*BASE, *extra)).learner()
    loss = float(_step(learner, _train_batch(_module(learner))))
    names = {"loss_policy", "loss_value", "loss_entropy", "loss_comm", "loss_moe"} | (
        {"loss_exit"} if extra == EXITS else set()
    )
    terms = {name: _metric(learner, name) for name in names}
    assert math.isclose(loss, sum(terms.values()), rel_tol=1e-6, abs_tol=1e-7), (loss, terms)
    entropy_coeff = learner.config.entropy_coeff
    assert isinstance(entropy_coeff, float)
    assert terms["loss_policy"] == _metric(learner, "policy_loss")
    assert math.isclose(terms["loss_value"], learner.config.vf_loss_coeff * _metric(learner, "vf_loss"), rel_tol=1e-6)
    assert math.isclose(terms["loss_entropy"], -entropy_coeff * _metric(learner, "entropy"), rel_tol=1e-6, abs_tol=1e-9)
    assert terms["loss_comm"] == _metric(learner, "comm_cost") and terms["loss_comm"] > 0  # the gates are on
    assert terms["loss_moe"] == _metric(learner, "aux_loss")
    assert (terms["loss_moe"] > 0) == (extra == MOE)
