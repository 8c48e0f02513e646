"""The one place that turns an `ExperimentConfig` into an RLlib `PPOConfig`.

Also checks, before Ray starts, what can only be checked against the environment itself: the env builds, its
spaces are a team env's, and the model fits its agent count (e.g. `model.graph.k` <= N - 1).

Natively vectorised envs (the env table's `make_vector`, e.g. SMAX) reach RLlib as one gymnasium VectorEnv per
EnvRunner: `gym_env_vectorize_mode="vector_entry_point"` makes RLlib call the registered creator with
`env_config | {"num_envs": B}`, and `make_env_from_dict` builds the B-env VectorEnv for it. Every other env is
built B times as a `TeamEnv` and stepped by gymnasium's SyncVectorEnv (RLlib's default). `probe_env` reads the
spaces from the single team env either way (the VectorEnv's single spaces are the same).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.tune.registry import register_env

from agents.algorithm import CommFormerPPOConfig, LearnerSettings
from agents.config import ConfigError, ExperimentConfig, to_dict
from agents.env_runner import TeamEnvRunner
from agents.faults import NonFiniteCounter
from agents.learner import CommFormerPPOLearner
from agents.rl_module import CommFormerRLModule, build_policy, team_dims
from commformer.graph import team_senders
from envs import custom
from envs.registry import is_custom, is_vectorised, make_team_env, make_team_vector_env
from envs.team import TeamEnv

ENV_ID = "commformer_team_env"
"""The name under which the team env creator is registered with Ray (in every process that builds an algo)."""


def env_config_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The plain-data env description that travels to the EnvRunners (RLlib's env_config is a dict).

    `history` (the window the env adds to each observation) is derived from the model, its one source:
    `model.history` for the orchid / attention encoders, 0 for mlp.
    """
    env = config.env
    return {
        "name": env.name,
        "factory": env.factory,
        "options": to_dict(env.options),
        "team_reward": env.team_reward,
        "use_state": env.use_state,
        "history": config.model.env_history,
    }


def make_env_from_dict(env_config: dict[str, Any]) -> TeamEnv | gym.vector.VectorEnv:
    """RLlib env creator: the inverse of `env_config_dict`; with "num_envs" (RLlib's vector entry point call) the
    VectorEnv of that many envs."""
    if "num_envs" in env_config:
        return make_team_vector_env(
            env_config["name"],
            env_config["options"],
            num_envs=env_config["num_envs"],
            team_reward=env_config["team_reward"],
            use_state=env_config["use_state"],
            history=env_config.get("history", 0),
        )
    return make_team_env(
        env_config["name"],
        env_config["options"],
        team_reward=env_config["team_reward"],
        use_state=env_config["use_state"],
        history=env_config.get("history", 0),
        factory=env_config.get("factory"),
    )


@dataclass(frozen=True)
class TeamSpaces:
    observation_space: gym.spaces.Dict
    action_space: gym.spaces.MultiDiscrete | gym.spaces.Box
    """MultiDiscrete([A] * N), or a float Box (N, A) for continuous actions."""
    n_agents: int


def probe_env(config: ExperimentConfig) -> TeamSpaces:
    """Builds the env once in this process to read its spaces and check the model against them. An env by import
    path (envs/custom.py) is first imported, built and put through PettingZoo's own API tests."""
    env_config = env_config_dict(config)
    if is_custom(config.env.name, config.env.factory):
        try:
            custom.probe(config.env.name, config.env.factory, env_config["options"])
        except custom.CustomEnvError as err:
            raise ConfigError(str(err)) from err
    try:
        env = make_env_from_dict(env_config)
    except custom.CustomEnvError as err:
        raise ConfigError(str(err)) from err
    except (ValueError, TypeError) as err:
        raise ConfigError(f"env '{config.env.name}' could not be built: {err}") from err
    assert isinstance(env, TeamEnv)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    assert isinstance(obs_space, gym.spaces.Dict) and isinstance(act_space, gym.spaces.MultiDiscrete | gym.spaces.Box)
    dims = team_dims(obs_space, act_space)
    n_agents = dims.n_agents
    try:
        team_senders(n_agents, config.model.graph)
        if dims.continuous:  # the parts that choose among discrete actions refuse a Box (CommFormerPolicy says which)
            with torch.device("meta"):  # shapes only: nothing is allocated
                build_policy(config.model, dims)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return TeamSpaces(obs_space, act_space, n_agents)


def worker_env_vars() -> dict[str, str]:
    """Environment of every Ray worker: one intra-op thread (small updates are faster, docs/DESIGN.md "Threads"), and
    threads that wait passively where a Learner uses more (`resources.learner_threads`; agents/__init__.py)."""
    return {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}


def build_ppo_config(config: ExperimentConfig) -> CommFormerPPOConfig:
    """Maps the typed experiment onto RLlib's PPOConfig (ours adds `sample_ahead`, agents/algorithm.py). Call
    `probe_env` first to validate against the env."""
    register_env(ENV_ID, make_env_from_dict)
    train, res = config.training, config.resources
    num_learners = max(res.num_learners, 1)
    if train.train_batch_size % num_learners:
        raise ConfigError(
            f"training.train_batch_size={train.train_batch_size} is not divisible by "
            f"resources.num_learners={res.num_learners}; expected a multiple"
        )
    faults = config.faults
    vectorize_mode = "vector_entry_point" if is_vectorised(config.env.name, config.env.factory) else "sync"
    ppo = CommFormerPPOConfig()
    ppo.sample_ahead = train.sample_ahead
    ppo.learner = LearnerSettings(
        graph_lr=train.graph_lr,
        adam_eps=train.adam_eps,
        graph_every=train.graph_every,
        graph_freeze_env_steps=int(train.graph_freeze_fraction * config.stop.env_steps),
        total_env_steps=config.stop.env_steps,
        huber_delta=train.huber_delta,
        value_norm=train.value_norm,
        threads=res.learner_threads,
    )
    return (
        ppo.framework("torch")
        .environment(env=ENV_ID, env_config=env_config_dict(config))
        .env_runners(
            env_runner_cls=TeamEnvRunner,
            num_env_runners=res.num_env_runners,
            num_envs_per_env_runner=res.num_envs_per_env_runner,
            num_cpus_per_env_runner=res.num_cpus_per_env_runner,  # type: ignore[arg-type]  # RLlib takes floats
            custom_resources_per_env_runner=dict(res.custom_resources_per_env_runner),
            rollout_fragment_length="auto",
            gym_env_vectorize_mode=vectorize_mode,
        )
        # Continuous actions leave the module unbounded and the team env clips them to each agent's box
        # (commformer/distributions.py): RLlib's loop must neither rescale them from [-1, 1] nor clip them.
        .environment(normalize_actions=False, clip_actions=False)
        .fault_tolerance(
            restart_failed_env_runners=faults.restart_env_runners,
            max_num_env_runner_restarts=faults.max_env_runner_restarts,
            delay_between_env_runner_restarts_s=faults.env_runner_restart_delay_s,
            restart_failed_sub_environments=faults.restart_failed_envs,
        )
        .callbacks(NonFiniteCounter)
        .learners(
            num_learners=res.num_learners,
            num_cpus_per_learner=res.num_cpus_per_learner,
            num_gpus_per_learner=res.num_gpus_per_learner,
            learner_class=CommFormerPPOLearner,
        )
        .training(
            lr=_linear(train.lr, train.lr_end, config.stop.env_steps),
            gamma=train.gamma,
            lambda_=train.gae_lambda,
            clip_param=train.clip_param,
            # RLlib's annotation says float; its docstring and Scheduler take [[t, value], ...] schedules too.
            entropy_coeff=_linear(train.entropy_coeff, train.entropy_coeff_end, config.stop.env_steps),  # type: ignore[arg-type]
            vf_loss_coeff=train.vf_loss_coeff,
            use_kl_loss=False,
            grad_clip=train.grad_clip,
            grad_clip_by="global_norm",
            train_batch_size_per_learner=train.train_batch_size // num_learners,
            minibatch_size=train.minibatch_size,
            num_epochs=train.num_epochs,
        )
        .rl_module(
            rl_module_spec=RLModuleSpec(module_class=CommFormerRLModule, model_config={"model": to_dict(config.model)})
        )
        .debugging(seed=config.run.seed, log_level=os.environ.get("COMMFORMER_RAY_LOG_LEVEL", "ERROR"))
    )


def _linear(start: float, end: float | None, env_steps: int) -> float | list[list[float]]:
    """A constant, or RLlib's piecewise-linear schedule over sampled env steps from `start` to `end`."""
    return start if end is None else [[0, start], [env_steps, end]]
