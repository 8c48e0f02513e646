"""The one place in agents/ that touches RLlib's private API (names with a leading underscore, ray 2.60).

The batched sampling loop (agents/env_runner.py), the learner's own batch pipeline, fused gradient step and minibatch
count (agents/learner.py) and sample-ahead's connector-state sync (agents/algorithm.py) reach under RLlib's public
surface. RLlib may rename, re-type or drop any private name in a minor release, so every such use lives here, behind a
function named for what it does, and the two private methods we override are wrapped in small hook classes whose
subclasses implement a public-named method of ours instead. `PRIVATE_NAMES` lists every RLlib private name this module
relies on and how; tests/agents/test_rllib_private.py checks each against the installed RLlib (one failure listing
everything that moved) and that no other module of agents/ uses an RLlib private name. A Ray upgrade starts with that
test.

Each function does only what RLlib's own code does with the name (no copies, no extra checks), so going through the
fence changes nothing that is computed (docs/DESIGN.md, "RLlib's private API").
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.callbacks.callbacks import RLlibCallback
from ray.rllib.connectors.learner.learner_connector_pipeline import LearnerConnectorPipeline
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.core.rl_module.rl_module import RLModule
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.annotations import override
from ray.rllib.utils.typing import ModuleID, ParamDict


@dataclass(frozen=True)
class PrivateName:
    """One private name of RLlib that this module relies on, and how.

    kind: "method" (called here), "hook" (a method overridden here, which RLlib calls) or "attribute" (an instance
    attribute RLlib's constructor sets; read, and where `used_by` says so written, here).
    args, keywords: for a method, the positional arguments (after self) and the keyword arguments passed here; for a
    hook, the keyword arguments our override names (RLlib's whole signature must still be accepted by it).
    used_by: RLlib methods whose source must still use the name for this module to work: the caller of a hook, the
    reader of an attribute written here or the writer of one read here.
    """

    owner: type
    name: str
    kind: str
    args: int = 0
    keywords: tuple[str, ...] = ()
    used_by: tuple[tuple[type, str], ...] = ()


# -- the EnvRunner (agents/env_runner.py) ---------------------------------------------------------------------


def needs_env_reset(runner: SingleAgentEnvRunner) -> bool:
    """Whether the runner's envs must be reset before the next step: set by RLlib at construction and whenever it
    recreates the env (`make_env`, also after a failed step with `restart_failed_sub_environments`)."""
    return runner._needs_initial_reset


def reset_envs(runner: SingleAgentEnvRunner) -> tuple[Any, Any]:
    """Resets every env of the runner's vector env as RLlib's loop does: seeded with the runner's seed while
    `needs_env_reset` holds (the first reset, and the first after RLlib recreated the env), unseeded otherwise; an env
    error handled by RLlib (recreate and retry when `restart_failed_sub_environments`); the reset timed in the
    runner's metrics. Clears `needs_env_reset`, so RLlib's own loop does not reset again. Returns the batched
    observations and the infos."""
    obs, infos = runner._try_env_reset(seed=runner._seed if runner._needs_initial_reset else None, options=None)
    runner._needs_initial_reset = False
    return obs, infos


def step_envs(runner: SingleAgentEnvRunner, actions: Any) -> Any:
    """One step of the vector env as RLlib's loop takes it: timed and counted in the runner's metrics; on an env
    error with `restart_failed_sub_environments`, the env is recreated and `ENV_STEP_FAILURE` returned (else it
    raises). Returns gymnasium's (obs, rewards, terminated, truncated, infos) otherwise."""
    return runner._try_env_step(actions)


ENV_ERROR_LOGGER = "ray.rllib"
"""The logger RLlib's EnvRunner reports an env's exception to (with its traceback) right before it rebuilds the envs
and returns `ENV_STEP_FAILURE`; the last exception logged there when that value arrives is the env's."""


class EnvErrorRecorder(logging.Handler):
    """Keeps the last env exception RLlib's EnvRunner logged, as "Type: message": RLlib catches it in
    `_try_env_step`, logs it and returns `ENV_STEP_FAILURE`, so the logging record is the only place it is still
    reachable. Only the text is kept (the exception's traceback would hold the failed step's frames alive)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            self.last = f"{type(error).__name__}: {error}"


def record_env_errors() -> EnvErrorRecorder:
    """A recorder attached to RLlib's EnvRunner logger (one per process: a second call returns the first)."""
    logger = logging.getLogger(ENV_ERROR_LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, EnvErrorRecorder):
            return handler
    recorder = EnvErrorRecorder()
    logger.addHandler(recorder)
    return recorder


def log_sampled_steps(runner: SingleAgentEnvRunner, num_steps: int, num_episodes: int) -> None:
    """The counters RLlib's loop updates at the end of a `_sample` call: the Prometheus env-step counter and the
    sampled env / agent / module steps and finished episodes, per call and lifetime."""
    runner._log_env_steps(metric=runner._metrics_num_env_steps_sampled, num_steps=num_steps)
    runner._increase_sampled_metrics(num_steps, num_episodes)


def log_finished_episode(runner: SingleAgentEnvRunner, length: int, episode_return: float, seconds: float) -> None:
    """A finished episode's length, return and duration in RLlib's episode metrics (`episode_return_mean` etc., over
    the configured smoothing window shared among the EnvRunners)."""
    runner._log_episode_metrics(length, episode_return, seconds)


def env_runner_device(runner: SingleAgentEnvRunner) -> torch.device:
    """The device the runner's module acts on."""
    return runner._device


def env_runner_callbacks(runner: SingleAgentEnvRunner) -> Sequence[RLlibCallback]:
    """The runner's instances of the config's `callbacks_class` (RLlib makes one set per runner)."""
    return runner._callbacks


def env_runner_weights_seq_no(runner: SingleAgentEnvRunner) -> int:
    """The version of the weights the runner holds, which RLlib's loop records with every step (`WEIGHTS_SEQ_NO`)."""
    return runner._weights_seq_no


def has_custom_connectors(config: AlgorithmConfig) -> bool:
    """Whether the config adds its own env-to-module or module-to-env connectors
    (`config.env_runners(env_to_module_connector=..., module_to_env_connector=...)`)."""
    return config._env_to_module_connector is not None or config._module_to_env_connector is not None


def act_exploring(module: RLModule, batch: dict[str, Any], t: int) -> dict[str, Any]:
    """`module.forward_exploration(batch, t=t)` without its eval() / train() toggles over every submodule: the caller
    has put the module in eval mode once (docs/BENCHMARKS.md, "Figures behind code choices")."""
    return module._forward_exploration(batch, t=t)


def act_greedy(module: RLModule, batch: dict[str, Any]) -> dict[str, Any]:
    """`module.forward_inference(batch)` without its eval() / train() toggles (as `act_exploring`)."""
    return module._forward_inference(batch)


class SampleLoopHook(SingleAgentEnvRunner):
    """A SingleAgentEnvRunner whose timestep loop is `sample_loop`.

    RLlib's `sample()` does the work around a call (weights version, `on_sample_end`, timers) and leaves the loop
    itself to the private `_sample`, which it offers no public way to replace. This class overrides `_sample` once,
    here; a subclass overrides `sample_loop` and calls `rllib_sample_loop` for RLlib's own loop.
    """

    @override(SingleAgentEnvRunner)
    def _sample(self, **kwargs: Any) -> list[SingleAgentEpisode]:
        # RLlib's keywords (num_timesteps, num_episodes, explore, random_actions, force_reset) pass through as they
        # are; tests/agents/test_rllib_private.py checks that `_sample` still takes them.
        return self.sample_loop(**kwargs)

    def sample_loop(
        self,
        *,
        num_timesteps: int | None = None,
        num_episodes: int | None = None,
        explore: bool,
        random_actions: bool = False,
        force_reset: bool = False,
    ) -> list[SingleAgentEpisode]:
        """`num_timesteps` env steps or `num_episodes` episodes (one of the two is given), as episode chunks;
        RLlib's loop unless a subclass says otherwise."""
        return self.rllib_sample_loop(
            num_timesteps=num_timesteps,
            num_episodes=num_episodes,
            explore=explore,
            random_actions=random_actions,
            force_reset=force_reset,
        )

    def rllib_sample_loop(self, **kwargs: Any) -> list[SingleAgentEpisode]:
        """RLlib's own timestep loop (connector pipelines, per-episode callbacks, one episode object per env)."""
        return cast(list[SingleAgentEpisode], super()._sample(**kwargs))


# -- the Learner (agents/learner.py) ----------------------------------------------------------------------------


def learner_connector(learner: Learner) -> LearnerConnectorPipeline | None:
    """The learner's connector pipeline (episodes -> train batch), None where the config builds none."""
    return learner._learner_connector


def replace_learner_connector(learner: Learner, pipeline: LearnerConnectorPipeline) -> None:
    """Makes `pipeline` the one the learner builds its train batches with (RLlib's `update` reads it)."""
    learner._learner_connector = pipeline


def optimizer_param_refs(learner: Learner, optimizer: torch.optim.Optimizer) -> list[Hashable]:
    """The references (keys of `learner_params`) of the parameters registered with `optimizer`, in registration
    order. RLlib's own list: read it, do not change it."""
    return learner._optimizer_parameters[optimizer]


def learner_params(learner: Learner) -> ParamDict:
    """Every registered parameter by its reference (the keys of RLlib's gradient dicts). RLlib's own mapping: the
    parameters may be changed (their `.grad`), the mapping not."""
    return learner._params


def optimizer_names_per_module(learner: Learner) -> Mapping[ModuleID, list[str]]:
    """The names the optimizers were registered under, per module, in the order RLlib steps them (each name is
    what `learner.get_optimizer(module_id, name)` takes). RLlib's own mapping: read it, do not change it."""
    return learner._module_optimizers


def steps_through_scaler_or_schedulers(learner: TorchLearner) -> bool:
    """Whether the torch learner scales its gradients or runs torch LR schedulers (both configured in
    `config.experimental`), which RLlib's `apply_gradients` handles."""
    return learner._grad_scalers is not None or learner._lr_scheduler_classes is not None


class MinibatchCountHook(Learner):
    """A Learner whose number of minibatches per `update()` is `minibatch_count`.

    RLlib decides the count in the private `_create_iterator_if_necessary` (the caller's count, else as many as show
    every row `num_epochs` times), which it offers no public way to change. This class overrides it once, here; a
    subclass overrides `minibatch_count`.
    """

    @override(Learner)
    def _create_iterator_if_necessary(
        self, *, training_data: Any, num_total_minibatches: int = 0, num_epochs: int = 1, **kwargs: Any
    ) -> Any:
        num_total_minibatches = self.minibatch_count(
            training_data=training_data,
            num_total_minibatches=num_total_minibatches,
            num_epochs=num_epochs,
            minibatch_size=kwargs.get("minibatch_size"),
        )
        return super()._create_iterator_if_necessary(
            training_data=training_data, num_total_minibatches=num_total_minibatches, num_epochs=num_epochs, **kwargs
        )

    def minibatch_count(
        self, *, training_data: Any, num_total_minibatches: int, num_epochs: int, minibatch_size: int | None
    ) -> int:
        """The number of minibatches this update takes (0: RLlib's rule). `num_total_minibatches` is the caller's
        (non-zero for data-parallel Learners, from the LearnerGroup); RLlib's by default."""
        return num_total_minibatches


# -- the algorithm's config (agents/algorithm.py) ---------------------------------------------------------------


def sync_env_runner_states_in_training_step(config: AlgorithmConfig, yes: bool) -> None:
    """With `yes`, `Algorithm.step` no longer gathers and broadcasts the EnvRunners' connector states after
    `training_step` (a blocking call): the training step sends them itself, as RLlib's IMPALA does."""
    config._dont_auto_sync_env_runner_states = yes


PRIVATE_NAMES: tuple[PrivateName, ...] = (
    # EnvRunner
    PrivateName(
        SingleAgentEnvRunner,
        "_needs_initial_reset",
        "attribute",
        used_by=((SingleAgentEnvRunner, "make_env"), (SingleAgentEnvRunner, "_sample")),
    ),
    PrivateName(EnvRunner, "_seed", "attribute"),
    PrivateName(SingleAgentEnvRunner, "_device", "attribute"),
    PrivateName(SingleAgentEnvRunner, "_callbacks", "attribute", used_by=((SingleAgentEnvRunner, "sample"),)),
    PrivateName(SingleAgentEnvRunner, "_weights_seq_no", "attribute", used_by=((SingleAgentEnvRunner, "set_state"),)),
    PrivateName(EnvRunner, "_metrics_num_env_steps_sampled", "attribute"),
    PrivateName(EnvRunner, "_try_env_reset", "method", keywords=("seed", "options")),
    PrivateName(EnvRunner, "_try_env_step", "method", args=1),
    PrivateName(EnvRunner, "_log_env_steps", "method", keywords=("metric", "num_steps")),
    PrivateName(SingleAgentEnvRunner, "_increase_sampled_metrics", "method", args=2),
    PrivateName(SingleAgentEnvRunner, "_log_episode_metrics", "method", args=3),
    PrivateName(
        SingleAgentEnvRunner,
        "_sample",
        "hook",
        keywords=("num_timesteps", "num_episodes", "explore", "random_actions", "force_reset"),
        used_by=((SingleAgentEnvRunner, "sample"),),
    ),
    # RLModule
    PrivateName(RLModule, "_forward_exploration", "method", args=1, keywords=("t",)),
    PrivateName(RLModule, "_forward_inference", "method", args=1),
    # AlgorithmConfig
    PrivateName(
        AlgorithmConfig,
        "_env_to_module_connector",
        "attribute",
        used_by=((AlgorithmConfig, "env_runners"), (AlgorithmConfig, "build_env_to_module_connector")),
    ),
    PrivateName(
        AlgorithmConfig,
        "_module_to_env_connector",
        "attribute",
        used_by=((AlgorithmConfig, "env_runners"), (AlgorithmConfig, "build_module_to_env_connector")),
    ),
    PrivateName(AlgorithmConfig, "_dont_auto_sync_env_runner_states", "attribute", used_by=((Algorithm, "step"),)),
    # Learner
    PrivateName(Learner, "_learner_connector", "attribute", used_by=((Learner, "_make_batch_if_necessary"),)),
    PrivateName(Learner, "_optimizer_parameters", "attribute", used_by=((Learner, "register_optimizer"),)),
    PrivateName(Learner, "_params", "attribute", used_by=((Learner, "register_optimizer"),)),
    PrivateName(Learner, "_module_optimizers", "attribute", used_by=((Learner, "register_optimizer"),)),
    PrivateName(TorchLearner, "_grad_scalers", "attribute", used_by=((TorchLearner, "apply_gradients"),)),
    PrivateName(TorchLearner, "_lr_scheduler_classes", "attribute", used_by=((TorchLearner, "apply_gradients"),)),
    PrivateName(
        Learner,
        "_create_iterator_if_necessary",
        "hook",
        keywords=("training_data", "num_total_minibatches", "num_epochs"),
        used_by=((Learner, "update"),),
    ),
)
"""Every RLlib private name this module relies on (tests/agents/test_rllib_private.py checks them)."""
