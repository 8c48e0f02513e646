"""PPO whose EnvRunners sample the next batch while the Learner updates on this one (`training.sample_ahead`).

RLlib's PPO alternates: the EnvRunners sample a batch, then the Learner updates on it while they wait, then the
new weights go out. Where the update is most of an iteration (SMAX 3m on 2 cores, docs/BENCHMARKS.md "SMAX
speed"), one core sits idle for most of it. With `sample_ahead` an iteration is:

1. every healthy remote EnvRunner without a sample in flight starts one (the first iteration, or after a restart);
2. wait for the samples in flight;
3. start the next samples at once, on the weights the EnvRunners hold;
4. update on the batch of step 2 and send the new weights, with the connector states each EnvRunner returned
   alongside its sample (one message per EnvRunner): they queue behind the sample of step 3 (an actor runs its
   calls in order) and reach the sample after it. RLlib's `Algorithm.step` would otherwise gather the connector
   states with a blocking call after `training_step`, which waits out the sample in flight; as in RLlib's
   IMPALA, the gather rides on the sample instead (agents/rllib_private.py
   `sync_env_runner_states_in_training_step`).

A batch is therefore taken with the weights from one update before the ones it trains (policy lag 1, the
asynchronous sampling of IMPALA / APPO reduced to one batch in flight). The Learner then uses decoupled PPO
(agents/learner.py `ppo_team_loss`): plain PPO's ratio against the recorded logits would start outside the clip
range wherever the last update moved the policy. GAE uses the Learner's current critic, as in synchronous PPO.
The lag of every batch is logged as `policy_lag` (the Learner's weights version minus the one the batch was
sampled with: 0 for synchronous PPO).

Needs remote EnvRunners (`resources.num_env_runners >= 1`): sampling in the driver would run on the Learner's
thread. A batch in flight when training stops, or when a checkpoint is restored into a fresh algorithm, is
dropped; nothing in it was counted.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from ray.rllib.algorithms.ppo import PPO, PPOConfig
from ray.rllib.core import (
    COMPONENT_ENV_TO_MODULE_CONNECTOR,
    COMPONENT_LEARNER,
    COMPONENT_MODULE_TO_ENV_CONNECTOR,
    COMPONENT_RL_MODULE,
)
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.utils.annotations import override
from ray.rllib.utils.metrics import (
    ALL_MODULES,
    ENV_RUNNER_RESULTS,
    ENV_RUNNER_SAMPLING_TIMER,
    LEARNER_RESULTS,
    LEARNER_UPDATE_TIMER,
    NUM_ENV_STEPS_SAMPLED_LIFETIME,
    NUM_MODULE_STEPS_TRAINED_LIFETIME,
    SYNCH_WORKER_WEIGHTS_TIMER,
    TIMERS,
    WEIGHTS_SEQ_NO,
)

from agents.rllib_private import sync_env_runner_states_in_training_step

SAMPLE_TAG = "commformer_sample"
POLICY_LAG = "policy_lag"


@dataclass(frozen=True)
class LearnerSettings:
    """What CommFormer's Learner (agents/learner.py) reads beyond PPOConfig's own fields, as one typed object.

    agents/build.py fills it from the experiment config, whose validation has already checked every value; RLlib
    hands a Learner nothing but its AlgorithmConfig, so the object rides there (`CommFormerPPOConfig.learner`).
    """

    graph_lr: float  # training.graph_lr: the upper level's (graph logits') Adam
    adam_eps: float  # training.adam_eps: every optimizer's epsilon
    graph_every: int  # training.graph_every: every graph_every-th gradient step is an upper-level step
    graph_freeze_env_steps: int  # training.graph_freeze_fraction x stop.env_steps: the graph stops moving here
    total_env_steps: int  # stop.env_steps: the run's length, for schedules over its progress (the MoE temperature)
    huber_delta: float  # training.huber_delta: the value loss's Huber threshold (normalised units)
    value_norm: bool  # training.value_norm: whether ValueNorm's statistics follow the targets
    threads: int  # resources.learner_threads: torch threads during an update


class CommFormerPPOConfig(PPOConfig):
    """PPOConfig plus `sample_ahead` (module docstring) and the Learner's `LearnerSettings`; builds
    `CommFormerPPO`."""

    @override(PPOConfig)
    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or CommFormerPPO)
        self.sample_ahead = False
        self.learner: LearnerSettings | None = None  # agents/build.py sets it

    def learner_settings(self) -> LearnerSettings:
        """The Learner's settings; a clear error for a config that was not made by agents/build.py."""
        if not isinstance(self.learner, LearnerSettings):
            raise TypeError(
                f"CommFormerPPOConfig.learner is {self.learner!r}; expected a LearnerSettings "
                "(agents/build.build_ppo_config sets it)"
            )
        return self.learner

    @override(PPOConfig)
    def validate(self) -> None:
        """RLlib's checks, and the Learner's settings present. `sample_ahead` without remote EnvRunners is refused
        by the experiment config (agents/config.py), in the user's words, before anything is built."""
        super().validate()
        self.learner_settings()
        # training_step sends the connector states itself (module docstring, step 4).
        sync_env_runner_states_in_training_step(self, bool(self.sample_ahead))


def _sample_with_states(runner: EnvRunner) -> tuple[Any, Any, Any]:
    """A batch, the runner's connector states after it and its metrics: one call, so no other waits on it."""
    episodes = runner.sample()
    assert isinstance(runner, SingleAgentEnvRunner)  # the team env's runner (agents/env_runner.py)
    states = runner.get_state(components=[COMPONENT_ENV_TO_MODULE_CONNECTOR, COMPONENT_MODULE_TO_ENV_CONNECTOR])
    return episodes, states, runner.get_metrics()


class CommFormerPPO(PPO):
    """RLlib's PPO, or with `config.sample_ahead` the overlapped step of the module docstring."""

    @override(PPO)
    def setup(self, config: Any) -> None:
        """RLlib's setup, then everything it built moved out of the cyclic garbage collector's reach
        (`gc.freeze`): the driver holds hundreds of thousands of long-lived objects (Ray, RLlib, torch, jax), and
        a full collection walking them took ~0.25 s, once every ~20 SMAX iterations of ~0.42 s. Frozen
        objects are still freed by reference counting; only cycles among them would outlive the run."""
        super().setup(config)
        gc.collect()  # garbage that exists now (an earlier algorithm's, in the same process) is not frozen
        gc.freeze()

    @override(PPO)
    def restore_from_path(self, path: Any, *args: Any, **kwargs: Any) -> None:
        """RLlib's restore, then the restored weights sent to the remote EnvRunners once more, after every
        earlier weight message has arrived. RLlib sends them fire-and-forget, and a runner still busy with the
        weights of the algorithm's construction has the message dropped (one "set_state" in flight per runner):
        the first batch after a resume was then sampled with the initial weights."""
        super().restore_from_path(path, *args, **kwargs)
        runners = self.env_runner_group
        if runners is not None and runners.num_remote_env_runners() > 0:
            runners.fetch_ready_async_reqs(tags="set_state", timeout_seconds=None)
            runners.sync_weights(from_worker_or_learner_group=self.learner_group, inference_only=True)

    @override(PPO)
    def training_step(self) -> None:
        config = self.config
        assert isinstance(config, CommFormerPPOConfig)
        if not config.sample_ahead:
            super().training_step()
            return
        runners, learners, metrics = self.env_runner_group, self.learner_group, self.metrics
        assert runners is not None and learners is not None and metrics is not None
        with metrics.log_time((TIMERS, ENV_RUNNER_SAMPLING_TIMER)):
            runners.foreach_env_runner_async(_sample_with_states, tag=SAMPLE_TAG)  # only runners without one
            ready: list[tuple[int, Any]] = runners.fetch_ready_async_reqs(
                tags=SAMPLE_TAG, timeout_seconds=config.sample_timeout_s
            )
            runners.foreach_env_runner_async(_sample_with_states, tag=SAMPLE_TAG)
        episodes = [episode for _, (sampled, _, _) in ready for episode in sampled]
        if not episodes:
            return  # every sample failed or timed out: RLlib restores failed runners before the next step
        metrics.aggregate([runner_metrics for _, (_, _, runner_metrics) in ready], key=ENV_RUNNER_RESULTS)
        sampled_with = min(int(episode.get_extra_model_outputs(WEIGHTS_SEQ_NO)[0]) for episode in episodes)

        with metrics.log_time((TIMERS, LEARNER_UPDATE_TIMER)):
            learner_results = learners.update(
                episodes=episodes,
                timesteps={
                    NUM_ENV_STEPS_SAMPLED_LIFETIME: metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME)),
                    NUM_MODULE_STEPS_TRAINED_LIFETIME: metrics.peek(
                        (LEARNER_RESULTS, ALL_MODULES, NUM_MODULE_STEPS_TRAINED_LIFETIME), default=0
                    ),
                },
                num_epochs=config.num_epochs,
                minibatch_size=config.minibatch_size,
                shuffle_batch_per_epoch=config.shuffle_batch_per_epoch,
            )
            metrics.aggregate(learner_results, key=LEARNER_RESULTS)
        modules = sorted(set(learner_results[0]) - {ALL_MODULES})
        # The update just taken made version v; the batch was sampled with `sampled_with`, v - 1 being lag 0.
        version = max(int(learner_results[0][module][WEIGHTS_SEQ_NO].peek()) for module in modules)
        metrics.log_value(POLICY_LAG, version - 1 - sampled_with, window=1)

        with metrics.log_time((TIMERS, SYNCH_WORKER_WEIGHTS_TIMER)):
            # What `sync_weights` sends (the inference weights and their version), with the merged connector
            # states and the sampled-steps counter `Algorithm.step` would have sent, in one message.
            # One "set_state" may be in flight per runner, a second is dropped (RLlib's actor manager). The last
            # iteration's ran right after the batch fetched above, so this waits for its reply only.
            runners.fetch_ready_async_reqs(tags="set_state", timeout_seconds=None)
            learner_state = learners.get_state(
                components=[f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{module}" for module in modules],
                inference_only=True,
            )[COMPONENT_LEARNER]
            runners.sync_env_runner_states(
                config=config,
                connector_states=[states for _, (_, states, _) in ready],
                rl_module_state={k: v for k, v in learner_state.items() if k in (COMPONENT_RL_MODULE, WEIGHTS_SEQ_NO)},
                env_steps_sampled=metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0),
                env_to_module=self.env_to_module_connector,
                module_to_env=self.module_to_env_connector,
            )
