"""`evaluate --sample-gates` / `rollout --sample-gates`: the gates' decisions drawn as in training (seeded), the actions
greedy; without it each gate opens iff its probability is above 0.5. In-process, on checkpoints written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import checkpoints as ckpt
from agents.cli import main
from agents.play import GATE_DECISIONS, greedy_actor, make_play_env, sampling_actor
from commformer.config import GateConfig, ModelConfig
from commformer.export import save_policy
from commformer.policy import CommFormerPolicy

ENV = {"name": "mpe_spread", "options": {"n_agents": 3, "max_cycles": 8}, "team_reward": "mean", "use_state": True}


def _checkpoint(path: Path, gates: bool) -> tuple[Path, CommFormerPolicy]:
    """A checkpoint of an untrained policy whose gates (if any) open with probabilities near 0.5 that vary."""
    env = make_play_env(ENV)
    state = env.observation_space["state"].shape[0]
    dims = {"n_agents": env.n_agents, "obs_dim": env.obs_dim, "n_actions": env.n_actions, "state_dim": state}
    env.close()
    torch.manual_seed(0)
    config = ModelConfig(embed_dim=8, num_heads=2, gates=GateConfig(enabled=gates, init_bias=0.0))
    policy = CommFormerPolicy(config, dims["n_agents"], dims["obs_dim"], dims["n_actions"], state)
    if policy.trunk.gate is not None:
        with torch.no_grad():
            policy.trunk.gate.proj.weight.normal_(std=0.3)
    save_policy(policy, path / ckpt.POLICY, dims, {"env": ENV, "iteration": 1, "env_steps": 0})
    (path / ckpt.META).write_text(json.dumps({"iteration": 1, "env_steps": 0}))
    return path, policy


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CommFormerPolicy]:
    return _checkpoint(tmp_path_factory.mktemp("gated") / "iter_000001", gates=True)


def test_the_actor_draws_the_gates_and_keeps_the_actions_greedy(gated: tuple[Path, CommFormerPolicy]) -> None:
    _, policy = gated
    env = make_play_env(ENV, policy)
    obs, _ = env.reset(seed=0)
    env.close()
    greedy, drawing = greedy_actor(policy, use_state=True), greedy_actor(policy, use_state=True, sample_gates=True)
    x, mask, state = (torch.as_tensor(obs[key])[None] for key in ("obs", "action_mask", "state"))
    with torch.no_grad():
        prob = policy(x, mask, state=state).gate_prob[0]
    assert ((prob > 0.05) & (prob < 0.95)).all()  # every gate undecided: a draw can differ from the greedy one
    _, stats = greedy(obs)
    assert np.array_equal(stats[GATE_DECISIONS], (prob > 0.5).float().numpy())
    torch.manual_seed(1)
    draws = [drawing(obs) for _ in range(40)]
    decisions = np.stack([d[1][GATE_DECISIONS] for d in draws])  # (40, N)
    assert 0 < decisions.mean() < 1 and not (decisions == stats[GATE_DECISIONS]).all()
    torch.testing.assert_close(torch.as_tensor(decisions.mean(0)), prob.float(), atol=0.3, rtol=0)
    for (acted, step), opened in zip(draws, decisions, strict=True):  # each draw's actions: the argmax given it
        with torch.no_grad():
            out = policy(x, mask, state=state, gate_open=torch.as_tensor(opened)[None])
        assert np.array_equal(acted, out.logits[0].argmax(-1).numpy()) and step["messages"] == float(out.messages)


def test_evaluate_with_drawn_gates_is_repeatable_and_differs_from_greedy(
    gated: tuple[Path, CommFormerPolicy], tmp_path: Path
) -> None:
    checkpoint = str(gated[0])
    runs = {}
    for name, extra in {"greedy": [], "drawn": ["--sample-gates"], "again": ["--sample-gates"]}.items():
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", checkpoint, "--episodes", "3", "--seed", "4", "--json", str(out), *extra]) == 0
        runs[name] = json.loads(out.read_text())
    assert runs["drawn"] == runs["again"]  # seeded by --seed
    assert runs["drawn"]["gate_open_rate"] != runs["greedy"]["gate_open_rate"]
    rollout = ["rollout", "mpe_spread", "--checkpoint", checkpoint, "--episodes", "1", "--sample-gates"]
    assert main(rollout) == 0
    assert main([*rollout[:-1], "--sample"]) == 0


def test_sample_draws_the_actions_at_their_probabilities_and_the_gates_too(
    gated: tuple[Path, CommFormerPolicy],
) -> None:
    """`sampling_actor` (`--sample`): the actions of the training rollouts, drawn from the masked logits given the
    drawn gates; over many draws each action's frequency is its probability (from the logits, by hand)."""
    _, policy = gated
    env = make_play_env(ENV, policy)
    obs, _ = env.reset(seed=1)
    env.close()
    x, mask, state = (torch.as_tensor(obs[key])[None] for key in ("obs", "action_mask", "state"))
    actor = sampling_actor(policy, use_state=True)
    torch.manual_seed(2)
    draws = [actor(obs) for _ in range(2000)]
    decisions = np.stack([d[1][GATE_DECISIONS] for d in draws])
    assert 0 < decisions.mean() < 1  # the gates are drawn too
    agent0 = np.array([a[0] for a, _ in draws])
    with torch.no_grad():  # agent 0's action probabilities given each drawn decision, averaged
        logits = policy(
            x.expand(2000, -1, -1),
            mask.expand(2000, -1, -1),
            state=state.expand(2000, -1),
            gate_open=torch.as_tensor(decisions),
        ).logits[:, 0]
        probs = torch.softmax(logits, -1).mean(0)
    freq = np.bincount(agent0, minlength=probs.shape[0]) / len(agent0)
    np.testing.assert_allclose(freq, probs.numpy(), atol=0.04)
    assert len(set(agent0.tolist())) > 1  # not an argmax


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "{gated}", "--sample-gates", "--early-exit"], "--early-exit and --sample-gates cannot be"),
        (["evaluate", "{gated}", "--sample", "--sample-gates"], "--sample-gates and --sample cannot be combined"),
        (["rollout", "mpe_spread", "--sample"], "--sample draws a trained policy's actions; expected --checkpoint"),
        (["evaluate", "{plain}", "--sample-gates"], "--sample-gates draws the temporal gates' decisions, but this"),
        (["rollout", "mpe_spread", "--sample-gates"], "--sample-gates draws a trained policy's gates; expected"),
    ],
)
def test_sample_gates_is_refused_where_it_cannot_apply(
    gated: tuple[Path, CommFormerPolicy],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    plain, _ = _checkpoint(tmp_path / "iter_000001", gates=False)
    argv = [a.format(gated=gated[0], plain=plain) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
