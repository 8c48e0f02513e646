"""The heads on the trunk's features, shared by the agents: ``PolicyHead`` (masked action logits) and ``ValueHead``
(per-agent values, with the embedded global state beside each agent's features when the policy reads one).

    features (B, N, d) --MLP or MoEHead, 0.01-scaled last layer--> logits (B, N, A), masked by action_mask
    features (B, N, d) [, embed(state) (B, d) beside every agent] --MLP or MoEHead--> values (B, N)

Each head is an ``MLP`` (Linear, activation, Linear; ``model.head`` / ``model.value_head`` = ``linear``) or a
mixture of experts (``moe``, commformer/layers/moe.py); exactly one is built, the other attribute is None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.config import HeadName, MoEConfig
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
    """Action logits from each agent's features, near-uniform at initialisation.

    Args:
        kind: ``linear`` (an ``MLP`` d -> d -> A) or ``moe`` (a ``MoEHead`` d -> A).
        embed_dim: d.  n_actions: A.  activation_name: the MLP's nonlinearity.  moe: the MoE head's settings.
    """

    def __init__(self, kind: HeadName, embed_dim: int, n_actions: int, activation_name: str, moe: MoEConfig) -> None:
        super().__init__()
        d = embed_dim
        self.mlp: MLP | None = None
        self.moe: MoEHead | None = None
        last_weight: Tensor
        last_bias: Tensor
        if kind == "moe":
            self.moe = MoEHead(d, n_actions, moe)
            last_weight, last_bias = self.moe.w2, self.moe.b2
        else:
            # The logits layer is built (draws its initial weights) before the hidden one: the order of the
            # policy's first versions, so that a seed keeps giving the same initial policy.
            logits = nn.Linear(d, n_actions)
            self.mlp = MLP(nn.Linear(d, d), activation(activation_name), logits)
            last_weight, last_bias = logits.weight, logits.bias
        # Near-uniform initial policy (as the 0.01-gain output layer of PPO practice), for early exploration.
        with torch.no_grad():
            last_weight.mul_(0.01)
            last_bias.zero_()

    def forward(self, h: Tensor, action_mask: Tensor | None = None) -> tuple[Tensor, MoEOutput | None]:
        """Masked logits (B, N, A) from the features h (B, N, d), with the MoE head's output (None for an MLP).

        ``action_mask``: optional (B, N, A), nonzero = available; masked actions get the dtype's finfo.min.
        """
        moe = None
        if self.moe is not None:
            moe = self.moe(h)
            logits = moe.out
        else:
            assert self.mlp is not None
            logits = self.mlp(h)
        return mask_logits(logits, action_mask), moe


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
