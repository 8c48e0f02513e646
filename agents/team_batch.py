"""PPO's learner pipeline in one piece: episode chunks -> the train batch, GAE done for all chunks at once.

RLlib's PPO learner pipeline walks the episodes many times over: it appends an artificial step to every chunk
(`AddOneTsToEpisodesAndTruncate`, which copies each episode), batches every column item by item, runs GAE as a
Python loop over every row, and carries the artificial rows, masked, into the batch. With 128 SMAX battles an
iteration cuts ~300 chunks and that pipeline took ~0.1 s of a ~0.5 s update (docs/BENCHMARKS.md). `TeamPPOBatch`
builds the same batch from whole arrays:

1. every chunk's T + 1 observations (the last one is the observation after its last step) are concatenated and
   the critic runs once over all of them (RLlib's piece does the same with its artificial rows);
2. the TD residuals of all steps at once, delta_t = r_t + gamma * (1 - terminated_t) * V(s_t+1) - V(s_t): the value
   after a chunk's last step bootstraps unless the episode terminated there;
3. GAE's recursion A_t = delta_t + gamma * lambda * A_t+1 over the chunks side by side (chunks padded on the
   right, so a chunk's last step starts from 0), one vector operation per time step of the longest chunk;
4. the rows of the real steps only (the observations after each chunk's last step are dropped): observations,
   actions, rewards, terminated / truncated flags (truncated: the chunk ends without a terminal, as RLlib marks
   it), every recorded model output, value targets A_t + V(s_t) and the
   advantages standardised over these rows;
5. with `proximal=True` (`training.sample_ahead`: the batch was sampled with the weights one update back), the
   same forward's logits at the real rows, in `PROX_LOGITS` (and the gate logits of the recorded gate decisions
   in `PROX_GATE_LOGITS`): the policy the update starts from, around which decoupled PPO clips its ratio
   (agents/learner.py, `ppo_team_loss`); with early exits in the rollouts, the final head's logits in
   `PROX_FINAL_LOGITS`, whatever depth acted (the main policy learns from every step).

It is the whole pipeline for the single-agent, stateless modules this project trains (CommFormerRLModule);
tests/agents/test_team_batch.py checks it against RLlib's own pipeline on real episodes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import tree
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.columns import Columns
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.evaluation.postprocessing import Postprocessing
from ray.rllib.utils.annotations import override

from agents.rl_module import EXIT_DEPTH, GATE_OPEN, flat_dist_inputs

PROX_LOGITS = "prox_action_dist_inputs"
"""The column of the proximal policy's logits (`proximal=True`): decoupled PPO's (agents/learner.py); a Gaussian's
inputs for continuous actions, in the layout of `ACTION_DIST_INPUTS`."""
PROX_GATE_LOGITS = "prox_gate_logits"
"""The gate logits (B, N) at the start of the update, for the recorded gate decisions (whenever this forward runs
and the EnvRunners sampled gates)."""
PROX_FINAL_LOGITS = "prox_final_logits"
"""The final head's logits (B, N * A) at the start of the update, when the EnvRunners acted with early exits: the
proximal policy of the main policy's term for steps an exit took (agents/learner.py, `_policy_terms`)."""


def gae(deltas: np.ndarray, lengths: np.ndarray, gamma: float, lambda_: float) -> np.ndarray:
    """Advantages of concatenated chunks: A_t = delta_t + gamma * lambda * A_t+1 within each chunk.

    Args:
        deltas: (sum(lengths),) TD residuals, chunk after chunk.  lengths: (E,) chunk lengths, each >= 1.
    """
    starts = np.cumsum(lengths) - lengths
    steps = np.arange(len(deltas)) - np.repeat(starts, lengths)  # position of each row within its chunk
    chunk = np.repeat(np.arange(len(lengths)), lengths)
    padded = np.zeros((len(lengths), int(lengths.max()) + 1), dtype=np.float64)
    padded[chunk, steps] = deltas
    discount = gamma * lambda_
    for t in range(padded.shape[1] - 2, -1, -1):  # the padding column and every padded step stay 0 -> A = 0
        padded[:, t] += discount * padded[:, t + 1]
    return padded[chunk, steps]


def _rows(buffer: InfiniteLookbackBuffer) -> Any:
    """A chunk's column from its first step on (without the lookback): the stored arrays themselves when the
    buffer holds arrays, which skips `get()`'s per-call work (a third of building a 3m batch from ~300 chunks,
    by cProfile); `get()` otherwise."""
    if not buffer.finalized:
        return buffer.get()
    lookback = buffer.lookback
    return tree.map_structure(lambda column: column[lookback:], buffer.data) if lookback else buffer.data


class TeamPPOBatch(ConnectorV2):
    """The learner pipeline of a single-agent, stateless module (module docstring)."""

    @override(ConnectorV2)
    def __init__(
        self,
        input_observation_space: Any = None,
        input_action_space: Any = None,
        *,
        gamma: float,
        lambda_: float,
        device: torch.device | str = "cpu",
        proximal: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.gamma, self.lambda_, self.device, self.proximal = gamma, lambda_, torch.device(device), proximal

    @override(ConnectorV2)
    def __call__(self, *, rl_module: Any, batch: dict[str, Any], episodes: Any, **kwargs: Any) -> Any:
        chunks = [episode for episode in episodes if len(episode) > 0]
        if not chunks:
            return batch
        for episode in chunks:
            if not isinstance(episode, SingleAgentEpisode):
                raise TypeError(f"TeamPPOBatch takes single-agent episode chunks; got a {type(episode).__name__}")
        module = rl_module[DEFAULT_MODULE_ID].unwrapped()  # a data-parallel Learner holds it wrapped in DDP
        lengths = np.array([len(episode) for episode in chunks])
        observations = [_rows(episode.observations) for episode in chunks]  # T + 1 each
        every_obs = tree.map_structure(lambda *parts: np.concatenate(parts), *observations)
        after_last = np.cumsum(lengths + 1) - 1  # the rows holding each chunk's observation after its last step
        step_rows = np.ones(int((lengths + 1).sum()), dtype=bool)
        step_rows[after_last] = False

        obs_batch = {Columns.OBS: tree.map_structure(self._tensor, every_obs)}
        keep = self._tensor(step_rows)
        proximal: dict[str, torch.Tensor] = {}
        exit_depth = self._recorded(chunks, EXIT_DEPTH)
        with torch.no_grad():
            if self.proximal or exit_depth is not None:
                # The decoder's logits are teacher-forced on the actions taken (agents/rl_module.py).
                actions = self._every_row([_rows(episode.actions) for episode in chunks]) if module.decodes else None
                values, out = module.values_and_logits(
                    obs_batch, exit_depth, self._recorded(chunks, GATE_OPEN), actions=actions
                )
                if self.proximal:
                    proximal[PROX_LOGITS] = flat_dist_inputs(out.logits, module.continuous)[keep]
                if GATE_OPEN in chunks[0].extra_model_outputs and out.gate_logit is not None:
                    proximal[PROX_GATE_LOGITS] = out.gate_logit[keep]
                if exit_depth is not None and out.exits is not None:
                    proximal[PROX_FINAL_LOGITS] = out.exits.final_logits.flatten(-2)[keep]
            else:
                values = module.compute_values(obs_batch)
        values = values.cpu().numpy().astype(np.float64)
        terminated = np.zeros(int(lengths.sum()), dtype=bool)
        truncated = np.zeros_like(terminated)
        last_steps = np.cumsum(lengths) - 1
        terminated[last_steps] = [episode.is_terminated for episode in chunks]
        truncated[last_steps] = [not episode.is_terminated for episode in chunks]  # RLlib: "the chunk ends here"
        rewards = np.concatenate([_rows(episode.rewards) for episode in chunks]).astype(np.float64)

        index = np.flatnonzero(step_rows)
        deltas = rewards + self.gamma * ~terminated * values[index + 1] - values[index]
        advantages = gae(deltas, lengths, self.gamma, self.lambda_)
        targets = advantages + values[index]
        standardised = torch.as_tensor(advantages, dtype=torch.float32)
        standardised = (standardised - standardised.mean()) / standardised.std().clamp(min=1e-4)

        columns: dict[str, Any] = {
            Columns.OBS: tree.map_structure(lambda x: x[keep], obs_batch[Columns.OBS]),
            Columns.ACTIONS: self._tensor(np.concatenate([_rows(episode.actions) for episode in chunks])),
            Columns.REWARDS: self._tensor(rewards),
            Columns.TERMINATEDS: self._tensor(terminated),
            Columns.TRUNCATEDS: self._tensor(truncated),
            Postprocessing.ADVANTAGES: standardised.to(self.device),
            Postprocessing.VALUE_TARGETS: self._tensor(targets),
        }
        for key in chunks[0].extra_model_outputs:
            columns[key] = self._tensor(np.concatenate([_rows(episode.extra_model_outputs[key]) for episode in chunks]))
        columns.update(proximal)
        batch[DEFAULT_MODULE_ID] = columns
        return batch

    def _recorded(self, chunks: list[SingleAgentEpisode], key: str) -> torch.Tensor | None:
        """A recorded model output (early-exit depths, gate decisions) for every row of the value forward (T + 1
        per chunk; the row after a chunk's last step repeats its last entry and is not used), or None when the
        EnvRunners recorded none."""
        if key not in chunks[0].extra_model_outputs:
            return None
        return self._every_row([_rows(episode.extra_model_outputs[key]) for episode in chunks])

    def _every_row(self, columns: list[Any]) -> torch.Tensor:
        """One column per chunk (T rows each) as a tensor with the value forward's T + 1 rows per chunk: the row
        after a chunk's last step repeats its last entry (it is not used)."""
        parts = []
        for column in columns:
            rows = np.asarray(column)
            parts += [rows, rows[-1:]]
        return self._tensor(np.concatenate(parts))

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        """A torch tensor on the learner's device; float64 becomes float32 (as RLlib's NumpyToTensor does)."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        return tensor.to(self.device)
