"""One real training iteration inside the RLlib learner, for tests that look at what an update moved."""

from __future__ import annotations

import torch

from agents.build import build_ppo_config, probe_env
from agents.config import load_config

Params = dict[str, torch.Tensor]


def one_iteration(overrides: list[str]) -> tuple[Params, Params, dict]:
    """signal env, local EnvRunner + local Learner: the policy's parameters before and after, learner metrics."""
    config = load_config("configs/signal.yaml", overrides)
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        module = algo.learner_group._learner.module["default_policy"]  # the local learner (num_learners=0)
        before = {k: v.detach().clone() for k, v in module.policy.named_parameters()}
        result = algo.train()
        after = {k: v.detach().clone() for k, v in module.policy.named_parameters()}
    finally:
        algo.stop()
    return before, after, result["learners"]["default_policy"]
