"""CommFormerPolicy with the history encoders (orchid, attention): shapes, gradients, what the window reaches,
and the no-future property with windows built by the team env itself."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from gymnasium import spaces
from pettingzoo import ParallelEnv
from torch.nn import functional as F

from commformer.config import ModelConfig
from commformer.history import HistoryEncoder, LastQueryAttention
from commformer.layers.orchid import OrchidConfig
from commformer.policy import CommFormerPolicy
from envs.team import TeamEnv

D, A = 5, 4
ENCODERS = ["orchid", "attention"]


def _config(encoder: str, history: int) -> ModelConfig:
    return ModelConfig(embed_dim=8, num_heads=2, encoder=encoder, history=history)


def _policy(n: int, encoder: str, history: int, seed: int = 0) -> CommFormerPolicy:
    torch.manual_seed(seed)
    return CommFormerPolicy(_config(encoder, history), n_agents=n, obs_dim=D, n_actions=A)


def _window(batch: tuple[int, ...], history: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """history (*B, L, N, D) and obs (*B, N, D), the window's last row."""
    gen = torch.Generator().manual_seed(seed)
    window = torch.randn(*batch, history, n, D, generator=gen)
    return window, window[..., -1, :, :]


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
@pytest.mark.parametrize("history", [1, 7, 16])
@pytest.mark.parametrize("n", [1, 3])
def test_shapes(encoder: str, batch: tuple[int, ...], history: int, n: int) -> None:
    policy = _policy(n, encoder, history)
    window, obs = _window(batch, history, n)
    mask = torch.ones(*batch, n, A)
    out = policy(obs, action_mask=mask, alive=torch.ones(*batch, n), history=window)
    assert out.logits.shape == (*batch, n, A)
    assert out.values.shape == out.gate_open.shape == (*batch, n)
    assert out.adjacency.shape == (*batch, n, n)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.values).all()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_only_the_chosen_encoder_is_built(encoder: str) -> None:
    policy = _policy(3, encoder, 5)
    assert policy.encoder.obs_embed is None and isinstance(policy.encoder.history_encoder, HistoryEncoder)
    assert _policy(3, "orchid", 5).encoder.history_encoder.mixer.config.max_len == 5  # type: ignore[union-attr]
    mlp = CommFormerPolicy(ModelConfig(embed_dim=8), n_agents=3, obs_dim=D, n_actions=A)
    assert mlp.encoder.history_encoder is None and mlp.encoder.obs_embed is not None


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("history", [1, 7])
def test_every_parameter_gets_a_finite_gradient(encoder: str, history: int) -> None:
    policy = _policy(3, encoder, history)
    window, obs = _window((4,), history, 3, seed=1)
    out = policy(obs, history=window)
    loss = -torch.log_softmax(out.logits, -1)[..., 0].sum() + out.values.square().sum() + out.comm_cost
    loss.backward()
    for name, param in policy.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        # With L = 1 the softmax over one key is 1 whatever the query: the query's gradient is exactly 0.
        if name.startswith("encoder.history_encoder") and history > 1:
            assert param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("row", [0, 8, 15])
def test_every_row_of_the_window_reaches_the_logits_of_its_own_agent(encoder: str, row: int) -> None:
    """The oldest row too (row 0): the encoder is long-range, not a short conv. Agent 1's row moves only its own
    logits when agents cannot hear each other (communicate=false)."""
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=8, num_heads=2, encoder=encoder, history=16, communicate=False)
    policy = CommFormerPolicy(config, n_agents=3, obs_dim=D, n_actions=A)
    window, obs = _window((2,), 16, 3)
    out = policy(obs, history=window).logits
    moved = window.clone()
    moved[:, row, 1] += 1.0
    diff = (policy(obs, history=moved).logits - out).abs().amax(dim=(0, 2))  # (N,)
    assert diff[1] > 0  # small at init (0.01-gain logits layer, decaying kernel), but there
    assert diff[0] == 0.0 and diff[2] == 0.0


@pytest.mark.parametrize("encoder", ENCODERS)
def test_missing_or_misshapen_history_is_named(encoder: str) -> None:
    policy = _policy(3, encoder, 7)
    window, obs = _window((2,), 7, 3)
    with pytest.raises(ValueError, match=rf"history is None but model.encoder='{encoder}'.*model.history=7"):
        policy(obs)
    with pytest.raises(ValueError, match=r"history has shape \(2, 6, 3, 5\); expected \(2, 7, 3, 5\)"):
        policy(obs, history=window[:, 1:])


def test_attention_mixer_is_the_last_row_of_causal_attention() -> None:
    """The O(L) last-query attention against torch's causal SDPA over the whole window (float64)."""
    torch.manual_seed(0)
    attn = LastQueryAttention(8, num_heads=2)
    x = torch.randn(3, 11, 8)
    b, length, d, h = 3, 11, 8, 2
    k, v = attn.key_value(x).view(b, length, 2, h, d // h).permute(2, 0, 3, 1, 4)
    q = attn.query(x).view(b, length, h, d // h).transpose(1, 2)  # every position's query
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, d_head)
    reference = attn.out(full.transpose(1, 2).reshape(b, length, d))[:, -1]
    torch.testing.assert_close(attn(x), reference)


def test_orchid_block_window_is_derived_from_history() -> None:
    encoder = HistoryEncoder("orchid", D, 8, 12, 1, OrchidConfig(max_len=256))
    assert encoder.mixer.config.max_len == 12  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"window has shape \(2, 13, 5\); expected \(B, 12, 5\)"):
        encoder(torch.zeros(2, 13, D))


# ------------------------------------------------------------------------------------------- no future


class ReplayEnv(ParallelEnv):
    """Plays back a fixed trajectory of team observations (T, N, D), whatever the actions."""

    metadata: ClassVar[dict[str, Any]] = {"name": "replay", "render_modes": []}

    def __init__(self, trajectory: np.ndarray) -> None:
        self.trajectory = trajectory.astype(np.float32)
        n = trajectory.shape[1]
        self.possible_agents = [f"a{i}" for i in range(n)]
        self.agents: list[str] = []
        self._obs_space = spaces.Box(-10.0, 10.0, shape=(trajectory.shape[2],), dtype=np.float32)
        self._act_space = spaces.Discrete(A)
        self.t = 0

    def observation_space(self, agent: str) -> spaces.Space[Any]:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space[Any]:
        return self._act_space

    def _obs(self) -> dict[str, np.ndarray]:
        return {a: self.trajectory[self.t, i] for i, a in enumerate(self.possible_agents)}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
        self.t, self.agents = 0, self.possible_agents[:]
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, int]) -> tuple[Any, Any, Any, Any, Any]:
        self.t += 1
        last = self.t == len(self.trajectory) - 1
        obs = self._obs()
        done = dict.fromkeys(self.agents, last)
        zero = dict.fromkeys(self.agents, 0.0)
        infos: dict[str, dict[str, Any]] = {a: {} for a in self.agents}
        if last:
            self.agents = []
        return obs, zero, dict.fromkeys(done, False), done, infos


def _logits_along(policy: CommFormerPolicy, trajectory: np.ndarray, history: int) -> torch.Tensor:
    """The logits (T, N, A) the policy computes at each step of the trajectory from the team env's windows."""
    env = TeamEnv(ReplayEnv(trajectory), history=history)
    obs, _ = env.reset(seed=0)
    windows, currents = [obs["history"]], [obs["obs"]]
    for _ in range(len(trajectory) - 1):
        obs, *_ = env.step(np.zeros(trajectory.shape[1], dtype=np.int64))
        windows.append(obs["history"])
        currents.append(obs["obs"])
    with torch.no_grad():
        return policy(torch.as_tensor(np.stack(currents)), history=torch.as_tensor(np.stack(windows))).logits


@pytest.mark.parametrize("encoder", ENCODERS)
def test_no_future_observation_reaches_an_action(encoder: str) -> None:
    """Two trajectories equal up to step 9 and different after it: the logits of steps 0..9 are identical
    bit for bit, and those of later steps differ (the check can see a difference)."""
    torch.set_default_dtype(torch.float32)  # the env's windows are float32
    length, split, history = 20, 9, 8
    rng = np.random.default_rng(0)
    first = rng.normal(size=(length, 3, D))
    second = first.copy()
    second[split + 1 :] = rng.normal(size=(length - split - 1, 3, D))
    policy = _policy(3, encoder, history).float()
    a, b = _logits_along(policy, first, history), _logits_along(policy, second, history)
    assert torch.equal(a[: split + 1], b[: split + 1])
    assert (a[split + 1 :] - b[split + 1 :]).abs().amax(dim=(1, 2)).min() > 0
