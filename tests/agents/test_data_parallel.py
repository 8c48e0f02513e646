"""Two CPU Learners (data-parallel, torch DDP over gloo) keep identical parameters, graph logits included."""

from __future__ import annotations

import numpy as np
import pytest

from agents.build import build_ppo_config, probe_env
from agents.config import load_config

pytestmark = pytest.mark.slow


def _weights(learner) -> dict[str, np.ndarray]:
    policy = learner.module["default_policy"].unwrapped().policy
    return {k: v.detach().cpu().numpy().copy() for k, v in policy.state_dict().items()}


def test_two_learners_stay_identical(ray_session) -> None:
    config = load_config(
        "configs/signal.yaml",
        [
            "training.train_batch_size=256",
            "training.minibatch_size=64",  # per learner: 128 rows each, 2 minibatches x 2 epochs
            "training.num_epochs=2",
            "training.graph_every=2",  # half of the steps are graph steps
            "model.embed_dim=16",
            "resources.num_envs_per_env_runner=4",
            "resources.num_learners=2",
            "resources.num_cpus_per_learner=0.5",
        ],
    )
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    try:
        first = [r.get() for r in algo.learner_group.foreach_learner(_weights)]
        for _ in range(2):
            result = algo.train()
        last = [r.get() for r in algo.learner_group.foreach_learner(_weights)]
    finally:
        algo.stop()
    assert len(last) == 2
    metrics = result["learners"]["default_policy"]
    # 128 rows per learner, minibatches of 64, 2 epochs: 4 steps (or 5: RLlib's minibatch cycle may add one),
    # counted once for the two learners, every 2nd a graph step.
    steps = metrics["gradient_steps"]
    assert 4 <= steps <= 5 and metrics["graph_steps"] in (steps // 2, (steps + 1) // 2)
    for name in last[0]:
        np.testing.assert_array_equal(last[0][name], last[1][name], err_msg=name)  # bit-identical replicas
    assert not np.array_equal(first[0]["trunk.graph.logits"], last[0]["trunk.graph.logits"])  # the graph did learn
    assert not np.array_equal(first[0]["policy_head.mlp.hidden.weight"], last[0]["policy_head.mlp.hidden.weight"])
