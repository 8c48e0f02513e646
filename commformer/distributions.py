"""The per-agent action distributions: categorical over masked logits, and the diagonal Gaussian of Box actions.

Both read one tensor of *distribution inputs* per agent, (..., N, W), the policy head's output:

- discrete: W = A masked logits (``commformer.functional.mask_logits``).
- continuous: W = 2A, ``[mean (A) | log_std (A)]``; the action is a real vector of A entries.

Bounds of continuous actions (docs/DESIGN.md, "Continuous actions"): the policy samples the *unbounded* Gaussian,
the team env clips the action to the agent's Box when it steps the raw env, and the log-prob is that of the
unclipped sample, which is what the episode stores. The learner recomputes the log-prob of the very same stored
vector from the very same inputs, so the rollout's and the learner's log-probs agree bit for bit (the PPO consistency
rule). A tanh squash with its Jacobian correction was the alternative: its log-prob needs atanh of the stored action,
which is infinite at the bounds (where a float32 tanh saturates already at |x| ~ 9), and it would change the
meaning of greedy acting on boxes with infinite bounds.

The ``dims_mask`` (..., N, A) of a continuous team says which of the A entries are an agent's own (a team of
agents with boxes of different sizes is padded to the largest); padded entries count neither in the log-prob nor
in the entropy. It is the team env's ``action_mask``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from commformer.functional import log_softmax

__all__ = [
    "LOG_STD_BOUNDS",
    "categorical_entropy",
    "categorical_log_prob",
    "gaussian_entropy",
    "gaussian_log_prob",
    "gaussian_mean",
    "gaussian_sample",
    "split_gaussian",
]

LOG_STD_BOUNDS = (-5.0, 2.0)
"""The state-dependent log-std (``model.log_std=state``) is clamped to this range (std 0.0067 .. 7.4), as SAC
practice does: an unbounded head output can drive the density to infinity or the samples to noise. The clamp is a
deterministic function of the head's output, so rollout and learner agree."""

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def categorical_log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    """log pi(a) (..., N) of integer actions (..., N) under masked logits (..., N, A)."""
    return log_softmax(logits).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def categorical_entropy(logits: Tensor) -> Tensor:
    """Entropy (..., N) of masked logits (..., N, A); masked actions contribute 0 * finite."""
    logp = log_softmax(logits)
    return -(logp.exp() * logp).sum(-1)


def split_gaussian(inputs: Tensor) -> tuple[Tensor, Tensor]:
    """``[mean | log_std]`` (..., 2A) -> mean (..., A), log_std (..., A).

    Raises:
        ValueError: an odd last dimension (not the inputs of a Gaussian).
    """
    width = inputs.shape[-1]
    if width % 2:
        raise ValueError(f"Gaussian inputs have last dimension {width}; expected 2A ([mean | log_std])")
    return inputs[..., : width // 2], inputs[..., width // 2 :]


def _masked_sum(x: Tensor, dims_mask: Tensor | None) -> Tensor:
    return x.sum(-1) if dims_mask is None else (x * (dims_mask != 0).to(x.dtype)).sum(-1)


def gaussian_log_prob(inputs: Tensor, actions: Tensor, dims_mask: Tensor | None = None) -> Tensor:
    """log N(a; mean, exp(log_std)^2) summed over each agent's own entries: (..., N) from inputs (..., N, 2A) and
    unclipped actions (..., N, A)."""
    mean, log_std = split_gaussian(inputs)
    z = (actions.to(mean.dtype) - mean) * torch.exp(-log_std)
    return _masked_sum(-0.5 * z * z - log_std - _HALF_LOG_2PI, dims_mask)


def gaussian_entropy(inputs: Tensor, dims_mask: Tensor | None = None) -> Tensor:
    """Entropy (..., N) of the diagonal Gaussian: sum over own entries of 0.5 + 0.5 log(2 pi) + log_std."""
    _, log_std = split_gaussian(inputs)
    return _masked_sum(log_std + (0.5 + _HALF_LOG_2PI), dims_mask)


def gaussian_sample(inputs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """An unbounded sample mean + std * eps (..., N, A), eps ~ N(0, 1); no gradient."""
    mean, log_std = split_gaussian(inputs.detach())
    eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
    return mean + torch.exp(log_std) * eps


def gaussian_mean(inputs: Tensor) -> Tensor:
    """The greedy action: the mean (..., N, A) (the env clips it to the box)."""
    return split_gaussian(inputs)[0]
