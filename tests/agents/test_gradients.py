"""The learner's gradient clipping and optimizer steps against RLlib's own (the reference they replace for speed).

`CommFormerPPOLearner` clips by global norm in one fused pass and steps the optimizers without RLlib's per-tensor
NaN checks (its own check, `_skip_if_not_finite`, runs before; tests/agents/test_bilevel.py). Here both paths get
the same gradients on the same learner: the clipped gradients, the logged norms and the parameters after the
optimizer steps must agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from agents.build import build_ppo_config, probe_env
from agents.config import load_config

MODULE = "default_policy"


@pytest.fixture(scope="module")
def learner(ray_session):
    config = load_config("configs/signal.yaml", ["model.embed_dim=16", "resources.num_envs_per_env_runner=2"])
    probe_env(config)
    algo = build_ppo_config(config).build_algo()
    yield algo.learner_group._learner
    algo.stop()


def _gradients(learner, scale: float, graph_step: bool) -> dict:
    """Random gradients for one level's parameters (as `compute_gradients` leaves them), set on the parameters."""
    generator = torch.Generator().manual_seed(0)
    active = {"graph"} if graph_step else {"model", "gates"}
    grads = {}
    for name, optimizer in learner.get_optimizers_for_module(MODULE):
        if name in active:
            for ref in learner._optimizer_parameters[optimizer]:
                param = learner._params[ref]
                param.grad = scale * torch.randn(param.shape, generator=generator)
                grads[ref] = param.grad
    return grads


def _norms(learner) -> dict[str, float]:
    return {
        name: float(learner.metrics.peek((MODULE, f"gradients_{name}_global_norm")))
        for name, _ in learner.get_optimizers_for_module(MODULE)
    }


@pytest.mark.parametrize("graph_step", [False, True])
@pytest.mark.parametrize("scale", [1e-4, 10.0])  # the global norm well below / above training.grad_clip (10)
def test_clipping_matches_rllib(learner, scale, graph_step):
    algo_config = learner.config.get_config_for_module(MODULE)
    ours = _gradients(learner, scale, graph_step)
    expected = {ref: g.clone() for ref, g in ours.items()}
    Learner.postprocess_gradients_for_module(
        learner, module_id=MODULE, config=algo_config, module_gradients_dict=expected
    )
    rllib_norms = _norms(learner)
    out = learner.postprocess_gradients_for_module(module_id=MODULE, config=algo_config, module_gradients_dict=ours)
    assert out.keys() == expected.keys()
    for ref in expected:
        torch.testing.assert_close(out[ref], expected[ref], rtol=1e-6, atol=0.0)
    ours_norms = _norms(learner)
    assert ours_norms == pytest.approx(rllib_norms, rel=1e-6)
    clipped = max(ours_norms.values()) > algo_config.grad_clip
    assert clipped == (scale > 1.0)  # the two cases do exercise both sides of the clip
    assert [n == 0.0 for n in ours_norms.values()].count(True) == 1  # the inactive level's optimizer logs 0


@pytest.mark.parametrize("graph_step", [False, True])
def test_optimizer_steps_match_rllib(learner, graph_step):
    module = learner.module[MODULE]
    start_params = copy.deepcopy(module.state_dict())
    start_optims = {name: copy.deepcopy(opt.state_dict()) for name, opt in learner.get_optimizers_for_module(MODULE)}

    def step(apply) -> dict[str, torch.Tensor]:
        module.load_state_dict(start_params)
        for name, opt in learner.get_optimizers_for_module(MODULE):
            opt.load_state_dict(start_optims[name])
        for param in module.parameters():
            param.grad = None
        grads = _gradients(learner, 1.0, graph_step)
        for _ in range(3):  # the Adam moments carry over between steps
            apply(grads)
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    expected = step(lambda grads: TorchLearner.apply_gradients(learner, grads))
    got = step(learner.apply_gradients)
    moved = [k for k in expected if not torch.equal(expected[k], start_params[k])]
    assert moved  # the steps did move the active level
    assert ("policy.trunk.graph.logits" in moved) == graph_step
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0.0, atol=0.0)
