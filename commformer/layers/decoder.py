"""CommFormer-dec's action decoder: the agents choose their actions one after another (MAT, arXiv 2205.14953,
as CommFormer's ``commformer_dec``), and agent i reads the actions already chosen only along its graph edges.

Agent i's action is drawn from ``head(z_i)``, where z_i starts as agent i's encoded observation (the communication
trunk's output) and each decoder block adds what i reads of the earlier agents' actions:

    tokens   x = [start, e(a_0), e(a_1), ..., e(a_{N-2})]       (B, N, d): MAT's shifted action sequence
    per block:
        x = x + SelfAttn(LN(x), M_tokens)                        the action tokens among themselves
        z = z + CrossAttn(query LN(z), keys/values LN(x), M_agents)
        z = z + MLP(LN(z))
    out = LN(z)                                                  (B, N, d), for the policy head

Token q >= 1 carries agent q - 1's action. The masks, from the effective adjacency A (receiver x sender, after the
temporal gates and dead senders; commformer/gates.py):

    M_agents[i, 0] = 1                     every agent reads the start token (its softmax is never empty)
    M_agents[i, q] = A[i, q-1] * [q-1 < i] agent i reads agent j = q - 1's action iff j acted before i and i hears j
    M_tokens[0]    = e_0                   the start token reads itself
    M_tokens[q]    = M_agents[q-1] + e_q   agent j's action token reads what agent j read, and itself

so agent j's token is its action in the context of what j heard when it chose it. Nothing agent i reads depends on
a_i or a later action (causality), and a closed gate or a dead sender cuts exactly those actions. The softmax weights
are multiplied by the mask, as in the encoder's attention (commformer/layers/attention.py), so the graph logits get
a gradient through the decoder too.

Departures from the official code, deliberate: its decoder masks the *shifted* sequence with the graph as if token q
were agent q's (so agent i always reads a_{i-1} whatever the graph, and edge (i, j) passes a_{j-1}); here each edge
passes the sender's own action. Its decoder adds the edge-type embeddings to queries and keys; here the mask alone
encodes the graph (every entry a decoder row keeps is the start token, the token's own or another agent's, so
the two edge types of the encoder would not separate anything new). Blocks are pre-LN like the encoder's.

Training is teacher-forced: one pass over the rollout's actions gives every agent's logits, equal to those the
agent was sampled from (``decode`` runs that very pass once per agent, on the actions chosen so far).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from commformer.functional import activation as make_activation
from commformer.layers.attention import block_mlp, masked_weights

__all__ = ["ActionDecoder", "DecoderBlock", "MaskedAttention", "decoder_masks"]


def decoder_masks(adjacency: Tensor) -> tuple[Tensor, Tensor]:
    """The decoder's masks ``(M_tokens, M_agents)``, each (B, N, N), from an effective adjacency (B, N, N).

    Rows of ``M_agents`` are agents, rows of ``M_tokens`` are tokens; columns are tokens (module docstring). The
    adjacency's entries are copied, not thresholded, so a straight-through adjacency keeps its gradient path.
    """
    b, n, _ = adjacency.shape
    strictly_lower = torch.ones(n, n, dtype=torch.bool, device=adjacency.device).tril(-1)  # [i, j] = j < i
    earlier = adjacency * strictly_lower  # (B, N, N), A[i, j] for j < i
    start = adjacency.new_ones(b, n, 1)
    agents = torch.cat([start, earlier[..., : n - 1]], dim=-1)  # (B, N, N): column q = agent q - 1's token
    own = torch.eye(n, dtype=adjacency.dtype, device=adjacency.device)  # token q reads itself
    first = adjacency.new_zeros(b, 1, n)
    tokens = torch.cat([first, agents[:, : n - 1]], dim=1) + own  # (B, N, N): row q >= 1 = agent q - 1's row
    return tokens, agents


class MaskedAttention(nn.Module):
    """Multi-head attention of queries (B, Nq, d) over keys/values (B, Nk, d), masked and weighted by (B, Nq, Nk)."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.query = nn.Linear(embed_dim, embed_dim)
        self.key_value = nn.Linear(embed_dim, 2 * embed_dim)  # [k | v], each head-major (H, d_head)
        self.out = nn.Linear(embed_dim, embed_dim)

    def forward(self, x_q: Tensor, x_kv: Tensor, mask: Tensor) -> Tensor:
        """Args: x_q (B, Nq, d), x_kv (B, Nk, d), mask (B, Nq, Nk), zero = not read. Returns (B, Nq, d)."""
        b, n_q, d = x_q.shape
        n_k = x_kv.shape[1]
        q = self.query(x_q).view(b, n_q, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, Nq, d_head)
        kv = self.key_value(x_kv).view(b, n_k, 2, self.num_heads, self.head_dim)  # (B, Nk, 2, H, d_head)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, Nk, d_head)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (B, H, Nq, Nk)
        weights = masked_weights(scores, mask.to(x_q.dtype).unsqueeze(1))  # (B, H, Nq, Nk)
        mixed = (weights @ v).transpose(1, 2).reshape(b, n_q, d)  # (B, Nq, H * d_head)
        return self.out(mixed)


class DecoderBlock(nn.Module):
    """One pre-LN decoder block: the action tokens attend among themselves, then the agents read them, then an MLP."""

    def __init__(self, embed_dim: int, num_heads: int, mlp_ratio: int, activation: str) -> None:
        super().__init__()
        self.norm_tokens = nn.LayerNorm(embed_dim)
        self.token_attn = MaskedAttention(embed_dim, num_heads)
        self.norm_query = nn.LayerNorm(embed_dim)
        self.norm_keys = nn.LayerNorm(embed_dim)
        self.agent_attn = MaskedAttention(embed_dim, num_heads)
        self.norm_mlp = nn.LayerNorm(embed_dim)
        self.mlp = block_mlp(embed_dim, mlp_ratio, activation)

    def forward(self, z: Tensor, x: Tensor, mask_tokens: Tensor, mask_agents: Tensor) -> tuple[Tensor, Tensor]:
        """Args: agent stream z (B, N, d), token stream x (B, N, d), masks (B, N, N). Returns the new (z, x)."""
        tokens = self.norm_tokens(x)
        x = x + self.token_attn(tokens, tokens, mask_tokens)
        z = z + self.agent_attn(self.norm_query(z), self.norm_keys(x), mask_agents)
        return z + self.mlp(self.norm_mlp(z)), x


class ActionDecoder(nn.Module):
    """The autoregressive decoder over a team's agents (module docstring): features and actions in, features out.

    Args:
        embed_dim: d, the width of the trunk's features.
        n_actions: A, per-agent number of discrete actions.
        num_blocks: decoder blocks (``model.decoder_blocks``).
        num_heads, mlp_ratio, activation: as the encoder's blocks.
    """

    def __init__(
        self, embed_dim: int, n_actions: int, num_blocks: int, num_heads: int, mlp_ratio: int, activation: str
    ) -> None:
        super().__init__()
        self.n_actions = n_actions
        # Row 0 is the start token, row a + 1 action a: MAT's bias-free linear map of a one-hot, then the activation.
        self.action_embed = nn.Embedding(n_actions + 1, embed_dim)
        self.embed_activation = make_activation(activation)
        self.blocks = nn.ModuleList(
            DecoderBlock(embed_dim, num_heads, mlp_ratio, activation) for _ in range(num_blocks)
        )
        self.norm = nn.LayerNorm(embed_dim)

    def tokens(self, actions: Tensor) -> Tensor:
        """MAT's shifted action tokens (B, N, d) from actions (B, N) int: [start, e(a_0), ..., e(a_{N-2})]."""
        shifted = torch.cat([torch.zeros_like(actions[:, :1]), actions[:, :-1] + 1], dim=1)  # (B, N)
        return self.embed_activation(self.action_embed(shifted))

    def forward(self, features: Tensor, adjacency: Tensor, actions: Tensor) -> Tensor:
        """Teacher-forced decoding: every agent's decoded features given the actions of those before it.

        Args:
            features: (B, N, d) the trunk's per-agent features (agent i's encoded observation).
            adjacency: (B, N, N) effective adjacency, receiver x sender (after gates and dead senders).
            actions: (B, N) int64, the team's actions; agent i's row of the output depends only on a_0..a_{i-1}.

        Returns:
            (B, N, d) normalised decoded features.
        """
        b, n, _ = features.shape
        if actions.shape != (b, n):
            raise ValueError(f"actions has shape {tuple(actions.shape)}; expected ({b}, {n})")
        if adjacency.shape != (b, n, n):
            raise ValueError(f"adjacency has shape {tuple(adjacency.shape)}; expected ({b}, {n}, {n})")
        mask_tokens, mask_agents = decoder_masks(adjacency.to(features.dtype))
        z, x = features, self.tokens(actions)
        for block in self.blocks:
            z, x = block(z, x, mask_tokens, mask_agents)
        return self.norm(z)

    def decode(
        self,
        features: Tensor,
        adjacency: Tensor,
        logits_of: Callable[[Tensor], Tensor],
        pick: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Autoregressive acting: agent 0 chooses, then agent 1 given a_0, ... (N passes).

        Each pass is the teacher-forced ``forward`` on the actions chosen so far (the later agents' entries are
        placeholders that no row read here depends on), followed by ``logits_of`` on every agent, so agent i's
        logits are computed exactly as the learner's one teacher-forced pass computes them.

        Args:
            features, adjacency: as ``forward``.
            logits_of: decoded features (B, N, d) -> masked logits (B, N, A) (the policy head).
            pick: agent i's logits (B, A) -> its actions (B,) int64 (a draw, or the argmax).

        Returns:
            actions (B, N) int64 and the logits each agent chose from (B, N, A).
        """
        b, n, _ = features.shape
        actions = torch.zeros(b, n, dtype=torch.long, device=features.device)
        chosen_from = []
        for i in range(n):
            logits = logits_of(self(features, adjacency, actions))[:, i]  # (B, A)
            chosen_from.append(logits)
            actions[:, i] = pick(logits)
        return actions, torch.stack(chosen_from, dim=1)
