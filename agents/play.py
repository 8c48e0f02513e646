"""Playing episodes outside training: the loop behind `commformer evaluate` and `commformer rollout`.

Needs no Ray: the policy is the exported `CommFormerPolicy` (safetensors + JSON), or a uniform random policy
over each agent's available actions.

`EarlyExitActor` acts through the early exits (`--early-exit`): the blocks after a team's exit are not run, and
it reports the exit depths, the MACs executed against the full-depth policy (counted once by FlopCounterMode on
the policy's own modules, commformer/early_exit.py) and the calibration of the exits. Calibration has no labels
in RL; the reference is the full-depth policy's greedy action, i.e. the action the exit stands in for: an exit's
confidence (its top probability) is compared with how often its greedy action agrees with the final head's.
That check runs one extra full forward per step, for measurement only: it is not counted in the MACs, and it
never changes an action.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from commformer.distributions import gaussian_mean, gaussian_sample
from commformer.early_exit import ece, exit_macs
from commformer.policy import CommFormerPolicy
from envs.registry import make_team_env
from envs.team import TeamEnv

Actor = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, dict[str, Any]]]
"""obs dict of one team -> (actions (N,), per-step stats such as messages and gate_open_rate; the array under
`GATE_DECISIONS` (N,), where present, is each agent's gate decision, for the rates conditioned on the env's facts)."""

GATE_DECISIONS = "gate_open_agents"


def make_play_env(
    env_section: dict[str, Any], policy: CommFormerPolicy | None = None, render_mode: str | None = None
) -> TeamEnv:
    """The team env of a config's env section, with the history window `policy` reads (none without a policy).

    The window length is not part of the env section: like training (agents/build.py), it is derived from the
    model, here the exported policy's own config.
    """
    return make_team_env(
        env_section["name"],
        env_section.get("options"),
        team_reward=env_section.get("team_reward", "mean"),
        use_state=env_section.get("use_state", False),
        history=policy.config.env_history if policy is not None else 0,
        render_mode=render_mode,
        factory=env_section.get("factory"),
    )


def check_policy_fits(policy: CommFormerPolicy, env: TeamEnv, env_section: dict[str, Any]) -> None:
    """Compares the sizes the policy was built for with the env's, before an episode is played.

    Raises:
        ValueError: one sentence naming every size that differs, the policy's and the env's (e.g. `rollout
            mpe_spread n_agents=5` with a policy of 3 agents), instead of a size mismatch from inside torch.
    """
    space = env.observation_space.spaces
    env_state = int(space["state"].shape[0]) if "state" in space and space["state"].shape else None
    env_history = int(space["history"].shape[0]) if "history" in space and space["history"].shape else 0
    sizes: list[tuple[str, int, int | None]] = [
        ("agents", policy.n_agents, env.n_agents),
        ("observation size", policy.obs_dim, env.obs_dim),
        ("actions", policy.n_actions, env.n_actions),
        ("continuous actions", int(policy.continuous), int(getattr(env, "continuous", False))),
        ("history window", policy.config.env_history, env_history),
    ]
    if policy.state_dim is not None:  # a critic that reads the state needs one of its size; otherwise none is read
        sizes.append(("state size", policy.state_dim, env_state))
    differ = [f"{what}: policy {mine}, env {theirs}" for what, mine, theirs in sizes if mine != theirs]
    if differ:
        options = env_section.get("options") or {}
        described = f"env '{env_section['name']}'" + (f" with options {options}" if options else "")
        raise ValueError(
            f"the policy does not fit {described} ({'; '.join(differ)}); expected the env the policy was trained "
            "on (the options in its metadata)"
        )


def greedy_actor(policy: CommFormerPolicy, use_state: bool, sample_gates: bool = False) -> Actor:
    """Argmax of the masked logits of an exported policy (batch of one team); for continuous actions the
    Gaussian's mean, which the env clips to each agent's box.

    A policy with a sequence encoder reads `obs["history"]`: play it on an env from `make_play_env`. With the
    autoregressive decoder the agents choose one after another (`CommFormerPolicy.act`), and the forward pass
    teacher-forced on those greedy actions gives the very logits they were the argmax of.

    ``sample_gates``: draw the temporal gates' decisions as the training rollouts do (torch's generator: seed it),
    the actions staying greedy; otherwise each gate opens iff its probability is above 0.5
    (`commformer evaluate --sample-gates`).
    """
    return _actor(policy, use_state, sample_gates, sample_actions=False)


def sampling_actor(policy: CommFormerPolicy, use_state: bool) -> Actor:
    """The policy as the training rollouts act: the gates' decisions and the actions drawn (torch's generator: seed
    it); `commformer evaluate --sample`. Where its success differs from `greedy_actor`'s, the argmax is not the
    policy that was trained."""
    return _actor(policy, use_state, sample_gates=policy.trunk.learns_gates, sample_actions=True)


def _actor(policy: CommFormerPolicy, use_state: bool, sample_gates: bool, sample_actions: bool) -> Actor:
    """`greedy_actor` / `sampling_actor`: gates and actions greedy or drawn."""
    if sample_gates and not policy.trunk.learns_gates:
        raise ValueError(
            "sample_gates draws the temporal gates' decisions, but no learned gates take this policy's decisions"
        )

    @torch.no_grad()
    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        x, mask, alive, state, history = _tensors(obs, use_state)
        chosen, gates = None, None
        if policy.decoder is not None or sample_gates:
            acted = policy.act(
                x, mask, alive, history=history, sample_gates=sample_gates, sample_actions=sample_actions
            )
            chosen = acted.actions if policy.decoder is not None else None
            gates = acted.gate_open if sample_gates else None
        out = policy(x, action_mask=mask, alive=alive, state=state, history=history, actions=chosen, gate_open=gates)
        receivers = float(alive.sum().clamp(min=1.0))
        stats = {
            "messages": float(out.messages),
            "gate_open_rate": float((out.gate_open * alive).sum()) / receivers,
            GATE_DECISIONS: out.gate_open.numpy(),
        }
        if chosen is not None:  # the decoder chose them, greedy or drawn
            return chosen.numpy(), stats
        if policy.continuous:
            return (gaussian_sample(out.logits) if sample_actions else gaussian_mean(out.logits)).numpy(), stats
        if sample_actions:
            return torch.distributions.Categorical(logits=out.logits).sample().numpy(), stats
        return out.logits.argmax(-1).numpy(), stats

    return act


def _tensors(
    obs: dict[str, np.ndarray], use_state: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """obs, action_mask, alive, state (or None), history (or None) of one team as tensors."""
    return (
        torch.as_tensor(obs["obs"]),
        torch.as_tensor(obs["action_mask"]),
        torch.as_tensor(obs["alive"]),
        torch.as_tensor(obs["state"]) if use_state and "state" in obs else None,
        torch.as_tensor(obs["history"]) if "history" in obs else None,
    )


class EarlyExitActor:
    """Greedy actions of an exported policy through its early exits (batch of one team), with exit statistics.

    Raises:
        ValueError: the policy was trained without ``model.early_exit.enabled``.
    """

    def __init__(self, policy: CommFormerPolicy, use_state: bool) -> None:
        if policy.exits is None:
            raise ValueError(
                "--early-exit needs a policy trained with model.early_exit.enabled=true; this one has no exits"
            )
        self.policy, self.use_state = policy, use_state
        self.macs = exit_macs(policy)
        self.n_exits = policy.exits.n_exits
        self.depths: list[int] = []
        self.agree: list[bool] = []  # per agent decision: the action taken equals the full-depth greedy action
        self.head_conf: list[list[float]] = [[] for _ in range(self.n_exits)]  # every head, every step
        self.head_correct: list[list[bool]] = [[] for _ in range(self.n_exits)]
        self.exit_conf: list[list[float]] = [[] for _ in range(self.n_exits)]  # the head the team exited at
        self.exit_correct: list[list[bool]] = [[] for _ in range(self.n_exits)]

    @torch.no_grad()
    def __call__(self, obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        x, mask, alive, state, history = _tensors(obs, self.use_state)
        acted = self.policy.act(x, mask, alive, history=history)
        actions = acted.logits.argmax(-1)  # (N,)
        d = int(acted.depth)
        full = self.policy(x, mask, alive, state, history)
        assert full.exits is not None
        reference = full.exits.final_logits.argmax(-1)  # (N,) the full-depth greedy action
        counted = alive > 0
        for layer in range(self.n_exits):
            probs = torch.softmax(full.exits.head_logits[layer], -1)  # (N, A)
            conf, choice = probs.max(-1)
            correct = choice == reference
            self.head_conf[layer].extend(conf[counted].tolist())
            self.head_correct[layer].extend(correct[counted].tolist())
            if layer == d:
                self.exit_conf[layer].extend(conf[counted].tolist())
                self.exit_correct[layer].extend(correct[counted].tolist())
        self.depths.append(d)
        self.agree.extend((actions == reference)[counted].tolist())
        receivers = float(alive.sum().clamp(min=1.0))
        stats = {
            "messages": float(full.messages) if d > 0 else 0.0,  # no block ran, no message was read
            "gate_open_rate": float((full.gate_open * alive).sum()) / receivers,
            "exit_depth": float(d),
            "macs": float(self.macs.per_exit[d]),
            GATE_DECISIONS: full.gate_open.numpy(),
        }
        return actions.numpy(), stats

    def report(self) -> dict[str, Any]:
        """Exit depths, MACs executed vs full depth, calibration and agreement (JSON-ready)."""
        n = self.macs.n_agents
        executed = float(np.mean([self.macs.per_exit[d] for d in self.depths])) if self.depths else math.nan
        histogram = {str(depth): self.depths.count(depth) for depth in range(self.n_exits + 1)}

        def _ece(conf: list[float], correct: list[bool]) -> float | None:
            return ece(torch.tensor(conf), torch.tensor(correct)) if conf else None

        return {
            "num_exits": self.n_exits + 1,
            "exit_depth_mean": float(np.mean(self.depths)) if self.depths else math.nan,
            "exit_depth_histogram": histogram,
            "macs_per_step_executed": executed,
            "macs_per_step_full_depth": float(self.macs.full_depth),
            "macs_per_action_executed": executed / n,
            "macs_per_action_full_depth": self.macs.full_depth / n,
            "macs_saved_fraction": 1.0 - executed / self.macs.full_depth,
            "macs_per_exit": list(self.macs.per_exit),
            "agreement_with_full_depth": float(np.mean(self.agree)) if self.agree else None,
            "ece_at_exit": {
                str(layer): _ece(self.exit_conf[layer], self.exit_correct[layer]) for layer in range(self.n_exits)
            },
            "ece_per_head": [_ece(self.head_conf[layer], self.head_correct[layer]) for layer in range(self.n_exits)],
        }


def random_actor(seed: int | None, env: TeamEnv | None = None) -> Actor:
    """Uniform over each agent's available actions; for an env with continuous actions, uniform in each agent's box
    (a standard normal in an entry without finite bounds)."""
    rng = np.random.default_rng(seed)
    if env is not None and getattr(env, "continuous", False):
        box = env.action_space
        assert isinstance(box, spaces.Box)
        low, high = box.low, box.high  # (N, A), padded entries [0, 0]
        bounded = np.isfinite(low) & np.isfinite(high)
        low0, high0 = np.where(bounded, low, 0.0), np.where(bounded, high, 0.0)

        def act_box(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
            uniform = low0 + rng.random(low.shape) * (high0 - low0)
            return np.where(bounded, uniform, rng.standard_normal(low.shape)).astype(np.float32), {}

        return act_box

    def act(obs: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, float]]:
        mask = obs["action_mask"] > 0  # (N, A)
        scores = rng.random(mask.shape) * mask  # available actions get a score in [0, 1), others 0
        scores[~mask] = -1.0
        return scores.argmax(-1), {}

    return act


def agent_facts(env: TeamEnv, info: dict[str, Any]) -> dict[str, np.ndarray]:
    """The per-agent facts the raw env reports (its `fact_names`, e.g. predator-prey's `saw_prey`), (N,) bool each,
    from a TeamEnv info: TeamEnv passes a per-agent scalar on as `info[key]` when every agent reports the same value
    and as `info["agent_info"][key]` (N,) otherwise."""
    names = getattr(env.raw_env, "fact_names", ())
    per_agent = info.get("agent_info", {})
    return {
        key: np.asarray(per_agent[key] if key in per_agent else np.full(env.n_agents, info.get(key, False)), bool)
        for key in names
    }


@dataclass
class EpisodeStats:
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    wins: list[bool] = field(default_factory=list)
    step_stats: dict[str, list[float]] = field(default_factory=dict)
    gate_given: dict[str, list[float]] = field(default_factory=dict)
    """Per env fact: [open and fact, fact, open and not fact, not fact], counted over alive agents and steps, the
    fact as known when the gate decided."""

    def count_gates(self, decisions: np.ndarray, alive: np.ndarray, facts: dict[str, np.ndarray]) -> None:
        """Adds one step's gate decisions (N,) of the alive agents to the counts of every fact (N,)."""
        live = np.asarray(alive) > 0
        opened = (np.asarray(decisions) > 0) & live
        for key, fact in facts.items():
            counts = self.gate_given.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            counts[0] += float((opened & fact).sum())
            counts[1] += float((live & fact).sum())
            counts[2] += float((opened & ~fact).sum())
            counts[3] += float((live & ~fact).sum())

    def extend(self, other: EpisodeStats) -> None:
        """Adds another set of episodes' figures to these."""
        self.returns += other.returns
        self.lengths += other.lengths
        self.wins += other.wins
        for key, values in other.step_stats.items():
            self.step_stats.setdefault(key, []).extend(values)
        for key, counts in other.gate_given.items():
            mine = self.gate_given.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            self.gate_given[key] = [a + b for a, b in zip(mine, counts, strict=True)]

    def summary(self) -> dict[str, Any]:
        """The figures `evaluate` reports (JSON-ready; win_rate is None where the env has no win signal)."""
        n = len(self.returns)
        returns = np.asarray(self.returns, dtype=np.float64)
        std = float(returns.std(ddof=1)) if n > 1 else 0.0
        means = {k: float(np.mean(v)) if v else None for k, v in self.step_stats.items()}
        return {
            "episodes": n,
            "return_mean": float(returns.mean()) if n else math.nan,
            "return_std": std,
            "return_ci95": 1.96 * std / math.sqrt(n) if n > 1 else None,
            "episode_len_mean": float(np.mean(self.lengths)) if n else math.nan,
            "win_rate": float(np.mean(self.wins)) if len(self.wins) == n and n else None,
            "messages_per_step": means.get("messages"),
            "gate_open_rate": means.get("gate_open_rate"),
            **self._gate_given_summary(),
        }

    def _gate_given_summary(self) -> dict[str, Any]:
        """`gate_open_rate_given`: per env fact, the gate open rate of the agents for which it holds (`true`) and of
        the others (`false`), with the agent-steps behind each; empty where the env reports no facts."""
        if not self.gate_given:
            return {}
        out = {}
        for key, (open_true, n_true, open_false, n_false) in self.gate_given.items():
            out[key] = {
                "true": open_true / n_true if n_true else None,
                "false": open_false / n_false if n_false else None,
                "agent_steps_true": int(n_true),
                "agent_steps_false": int(n_false),
            }
        return {"gate_open_rate_given": out}


def play(
    env: TeamEnv,
    actor: Actor,
    episodes: int,
    seed: int | None = None,
    frames: list[np.ndarray] | None = None,
    on_episode: Callable[[int, float, int], None] | None = None,
) -> EpisodeStats:
    """Plays `episodes` full episodes; appends rendered frames of every step to `frames` when given."""
    stats = EpisodeStats()
    for episode in range(episodes):
        obs, info = env.reset(seed=None if seed is None else seed + episode)
        total, length, done = 0.0, 0, False
        if frames is not None:
            frames.append(np.asarray(env.render()))
        while not done:
            actions, step = actor(obs)
            decisions = step.pop(GATE_DECISIONS, None)
            if decisions is not None:
                stats.count_gates(decisions, obs["alive"], agent_facts(env, info))
            for key, value in step.items():
                stats.step_stats.setdefault(key, []).append(value)
            obs, reward, terminated, truncated, info = env.step(actions)
            total += float(reward)
            length += 1
            done = bool(terminated or truncated)
            if frames is not None:
                frames.append(np.asarray(env.render()))
        stats.returns.append(total)
        stats.lengths.append(length)
        if "won" in info:
            stats.wins.append(bool(info["won"]))
        if on_episode is not None:
            on_episode(episode, total, length)
    return stats


def write_gif(frames: list[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Writes RGB frames (H, W, 3) as an animated GIF with Pillow (no browser, no display)."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write; the env rendered nothing")
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return path
