"""``AgentEncoder``: each agent's own input -> its embedding, before the agents communicate.

    encoder=mlp:               obs (*B, N, D) --LN, Linear, activation--> h (*B, N, d)
    encoder=orchid/attention:  history (*B, L, N, D) --per agent, over time: HistoryEncoder--> h (*B, N, d)
    h (+ agent-index embedding)

History (``model.encoder`` orchid / attention, ``model.history`` = L): each agent's action is computed from
its own last L observations, encoded over time (commformer/history.py) *before* the agents communicate; the
graph attention then mixes the agents' encodings of the current step. The window ``history`` (*B, L, N, D) is
part of the observation (the team env builds it, envs/team.py): it holds steps t - L + 1 .. t, so nothing
after step t can reach the action at step t, and the learner recomputes from the very window the EnvRunner
used. ``obs`` is still passed (it fixes the batch shape, and the mlp encoder reads it).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from commformer.config import ModelConfig
from commformer.functional import activation
from commformer.history import HistoryEncoder
from commformer.validate import require_shape

__all__ = ["AgentEncoder"]


class AgentEncoder(nn.Module):
    """Per-agent embeddings from the current observations (``mlp``) or from each agent's window of them.

    Args:
        config: the model config (``encoder``, ``history``, ``embed_dim``, ``agent_embedding``, ...).
        n_agents: N.
        obs_dim: D, per-agent observation size.
    """

    def __init__(self, config: ModelConfig, n_agents: int, obs_dim: int) -> None:
        super().__init__()
        d = config.embed_dim
        self.kind, self.history = config.encoder, config.history
        self.n_agents, self.obs_dim = n_agents, obs_dim
        # Exactly one encoder is built, so every parameter is used (and gets a gradient) in every forward.
        self.obs_embed: nn.Sequential | None = None
        self.history_encoder: HistoryEncoder | None = None
        if config.encoder == "mlp":
            self.obs_embed = nn.Sequential(nn.LayerNorm(obs_dim), nn.Linear(obs_dim, d), activation(config.activation))
        else:
            self.history_encoder = HistoryEncoder(
                config.encoder, obs_dim, d, config.history, config.num_heads, config.orchid
            )
        self.agent_embed = nn.Embedding(n_agents, d) if config.agent_embedding else None
        if self.agent_embed is not None:
            nn.init.normal_(self.agent_embed.weight, std=0.02)

    def forward(self, obs: Tensor, history: Tensor | None = None) -> Tensor:
        """Each agent's embedding.

        Args:
            obs: (*B, N, D) the current observations (the caller checks this shape).
            history: (*B, L, N, D) each agent's last L observations, oldest first; required by the orchid /
                attention encoders, ignored by mlp.

        Returns:
            (*B, N, d).
        """
        batch = obs.shape[:-2]
        flat, n = math.prod(batch), self.n_agents  # reshape(-1, ...) is ambiguous when a batch dim is 0
        x = obs.reshape(flat, n, self.obs_dim)  # (B, N, D)
        h = self.obs_embed(x) if self.obs_embed is not None else self._encode_history(history, batch)  # (B, N, d)
        if self.agent_embed is not None:
            h = h + self.agent_embed.weight  # (N, d) broadcast over B
        return h.reshape(*batch, n, h.shape[-1])

    def _encode_history(self, history: Tensor | None, batch: tuple[int, ...]) -> Tensor:
        """The windows (*B, L, N, D) -> (B, N, d), one sequence per agent."""
        assert self.history_encoder is not None
        n, length, dim = self.n_agents, self.history, self.obs_dim
        if history is None:
            raise ValueError(
                f"history is None but model.encoder={self.kind!r} computes each action from the last "
                f"model.history={length} observations; expected history (*B, {length}, {n}, {dim}) (the team env's "
                f'obs["history"], built with history={length})'
            )
        require_shape("history", history.shape, (*batch, length, n, dim))
        flat = math.prod(batch)
        seq = history.reshape(flat, length, n, dim).transpose(1, 2)  # (B, N, L, D)
        seq = seq.reshape(flat * n, length, dim)  # (B * N, L, D): one sequence per agent
        return self.history_encoder(seq).reshape(flat, n, -1)  # (B, N, d)
