"""The heads on the trunk's features, shared by the agents: ``PolicyHead`` (masked action logits, or a Gaussian's
mean and log-std for Box actions) and ``ValueHead`` (per-agent values, with the embedded global state beside each
agent's features when the policy reads one).

    features (B, N, d) --MLP or MoEHead, 0.01-scaled last layer--> logits (B, N, A), masked by action_mask
                                                                or [mean | log_std] (B, N, 2A) (Box actions)
    features (B, N, d) [, embed(state) (B, d) beside every agent] --MLP or MoEHead--> values (B, N)

Each head is an ``MLP`` (Linear, activation, Linear; ``model.head`` / ``model.value_head`` = ``linear``) or a
mixture of experts (``moe``, commformer/layers/moe.py); exactly one is built, the other attribute is None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.config import HeadName, LogStdName, MoEConfig
from commformer.distributions import LOG_STD_BOUNDS
from commformer.functional import activation, mask_logits
from commformer.layers.moe import MoEHead, MoEOutput

__all__ = ["MLP", "PolicyHead", "ValueHead"]


class MLP(nn.Module):
    """``out(activation(hidden(x)))``: (..., in) -> (..., out), with named layers."""

    def __init__(self, hidden: nn.Linear, nonlinearity: nn.Module, out: nn.Linear) -> None:
        super().__init__()
        self.hidden, self.activation, self.out = hidden, nonlinearity, out

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.activation(self.hidden(x)))

    def forward_beside(self, x: Tensor, shared: Tensor) -> Tensor:
        """The MLP of the concatenation [x_i, s] for every row i, without building it.

        Args:
            x: (B, N, a) per-row inputs.
            shared: (B, b) one input per batch entry, the same beside each of its N rows (``hidden`` reads a + b).

        Returns:
            (B, N, out).
        """
        a, weight = x.shape[-1], self.hidden.weight
        # [x, s] W^T + b = x W_x^T + (s W_s^T + b): the shared half once per team, not once per agent, and no
        # (B, N, a + b) concatenation (docs/BENCHMARKS.md, "Figures behind code choices").
        hidden = F.linear(x, weight[:, :a]) + F.linear(shared, weight[:, a:], self.hidden.bias).unsqueeze(1)
        return self.out(self.activation(hidden))  # (B, N, out)


class PolicyHead(nn.Module):
    """Action logits from each agent's features, near-uniform at initialisation; or, for Box actions (``log_std``
    given), the diagonal Gaussian's inputs ``[mean | log_std]`` (commformer/distributions.py), mean near 0 and
    log-std near ``log_std_init`` at initialisation.

    Args:
        kind: ``linear`` (an ``MLP`` d -> d -> out) or ``moe`` (a ``MoEHead`` d -> out).
        embed_dim: d.  n_actions: A (discrete actions, or the entries of a Box action).
        activation_name: the MLP's nonlinearity.  moe: the MoE head's settings.
        log_std: None for discrete actions; ``parameter`` (out = A, a learned log-std vector ``log_std`` (A,)
            shared by all states and agents) or ``state`` (out = 2A: the head's second half, clamped to
            ``LOG_STD_BOUNDS``).
        log_std_init: the initial log-std of either kind.
    """

    def __init__(
        self,
        kind: HeadName,
        embed_dim: int,
        n_actions: int,
        activation_name: str,
        moe: MoEConfig,
        log_std: LogStdName | None = None,
        log_std_init: float = 0.0,
    ) -> None:
        super().__init__()
        d = embed_dim
        self.n_actions = n_actions
        self.log_std_kind = log_std
        out = 2 * n_actions if log_std == "state" else n_actions
        self.mlp: MLP | None = None
        self.moe: MoEHead | None = None
        last_weight: Tensor
        last_bias: Tensor
        if kind == "moe":
            self.moe = MoEHead(d, out, moe)
            last_weight, last_bias = self.moe.w2, self.moe.b2
        else:
            # The logits layer is built (draws its initial weights) before the hidden one: the order of the
            # policy's first versions, so that a seed keeps giving the same initial policy.
            logits = nn.Linear(d, out)
            self.mlp = MLP(nn.Linear(d, d), activation(activation_name), logits)
            last_weight, last_bias = logits.weight, logits.bias
        # Near-uniform initial policy (as the 0.01-gain output layer of PPO practice), for early exploration.
        with torch.no_grad():
            last_weight.mul_(0.01)
            last_bias.zero_()
            if log_std == "state":
                last_bias[..., n_actions:] = log_std_init  # the MoE's b2 is (experts, out): every expert's
        self.log_std: nn.Parameter | None = (
            nn.Parameter(torch.full((n_actions,), float(log_std_init))) if log_std == "parameter" else None
        )

    @property
    def continuous(self) -> bool:
        """Whether the head parametrises a Gaussian over Box actions."""
        return self.log_std_kind is not None

    def forward(self, h: Tensor, action_mask: Tensor | None = None) -> tuple[Tensor, MoEOutput | None]:
        """Distribution inputs from the features h (B, N, d), with the MoE head's output (None for an MLP): masked
        logits (B, N, A), or for Box actions ``[mean | log_std]`` (B, N, 2A).

        ``action_mask``: optional (B, N, A), nonzero = available; masked actions get the dtype's finfo.min. A Box
        action's mask says which entries are the agent's own; it is applied in the log-prob, not here.
        """
        moe = None
        if self.moe is not None:
            moe = self.moe(h)
            out = moe.out
        else:
            assert self.mlp is not None
            out = self.mlp(h)
        if self.log_std_kind is None:
            return mask_logits(out, action_mask), moe
        a = self.n_actions
        if self.log_std is not None:
            mean, log_std = out, self.log_std.expand_as(out)
        else:
            mean, log_std = out[..., :a], out[..., a:].clamp(*LOG_STD_BOUNDS)
        return torch.cat([mean, log_std], dim=-1), moe


class ValueHead(nn.Module):
    """Per-agent values from each agent's features, and from the global state when the policy reads one.

    Args:
        kind: ``linear`` (an ``MLP`` in -> d -> 1) or ``moe`` (a ``MoEHead`` in -> 1); in = 2d with a state, else d.
        embed_dim: d.
        state_dim: S, or None when the policy reads no global state.
        activation_name: the nonlinearity of the MLP and of the state embedding.  moe: the MoE head's settings.
    """

    def __init__(
        self, kind: HeadName, embed_dim: int, state_dim: int | None, activation_name: str, moe: MoEConfig
    ) -> None:
        super().__init__()
        d = embed_dim
        self.state_dim = state_dim
        self.state_embed = (
            nn.Sequential(nn.LayerNorm(state_dim), nn.Linear(state_dim, d), activation(activation_name))
            if state_dim is not None
            else None
        )
        in_dim = 2 * d if state_dim is not None else d
        self.mlp: MLP | None = None
        self.moe: MoEHead | None = None
        if kind == "moe":
            self.moe = MoEHead(in_dim, 1, moe)
        else:
            self.mlp = MLP(nn.Linear(in_dim, d), activation(activation_name), nn.Linear(d, 1))

    def forward(self, h: Tensor, state: Tensor | None = None) -> tuple[Tensor, MoEOutput | None]:
        """Values (B, N) from the features h (B, N, d), with the MoE head's output (None for an MLP).

        With a state s, the head reads [h_i, embed(s)] (2d) for every agent i.

        Args:
            h: (B, N, d).
            state: (*B, S) with prod(*B) = B; required when the head was built with ``state_dim``, else must be None.
        """
        s = self._embed_state(h.shape[0], state)  # (B, d) or None
        if self.moe is not None:
            x = h if s is None else torch.cat([h, s.unsqueeze(1).expand_as(h)], dim=-1)  # (B, N, 2d)
            moe = self.moe(x)
            return moe.out.squeeze(-1), moe
        assert self.mlp is not None
        out = self.mlp(h) if s is None else self.mlp.forward_beside(h, s)  # (B, N, 1)
        return out.squeeze(-1), None

    def _embed_state(self, flat: int, state: Tensor | None) -> Tensor | None:
        """The embedded global state (B, d), or None when the head reads no state."""
        if self.state_embed is None or self.state_dim is None:
            if state is not None:
                raise ValueError(
                    "state was given but the policy was built with state_dim=None; "
                    "expected state=None or a policy built with the environment's state_dim"
                )
            return None
        if state is None:
            raise ValueError(
                f"state is None but the policy was built with state_dim={self.state_dim} and "
                "model.use_state=true; expected a (*B, S) global state"
            )
        return self.state_embed(state.reshape(flat, self.state_dim))  # (B, d)
