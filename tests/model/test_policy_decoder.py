"""CommFormer-dec in CommFormerPolicy: acting agent after agent equals the learner's teacher-forced pass, masks hold,
the graph and gates reach the decoder, and the decoder composes with (or refuses) the other options."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from commformer.config import EarlyExitConfig, GateConfig, GraphConfig, ModelConfig
from commformer.export import load_policy, save_policy
from commformer.policy import CommFormerPolicy

N, D, A, S = 4, 5, 3, 6
CONFIG = ModelConfig(
    embed_dim=8,
    num_heads=2,
    num_blocks=1,
    graph=GraphConfig(k=2),
    gates=GateConfig(init_bias=0.0),
    decoder="autoregressive",
    decoder_blocks=2,
)


def _policy(config: ModelConfig = CONFIG, seed: int = 0) -> CommFormerPolicy:
    torch.manual_seed(seed)
    policy = CommFormerPolicy(config, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    with torch.no_grad():  # actions that matter: a decoder near its initialisation barely reads them
        for param in policy.decoder.parameters() if policy.decoder is not None else ():
            param.normal_(0.0, 0.5)
        for param in policy.policy_head.parameters():
            param.normal_(0.0, 0.5)
    return policy


def _inputs(batch: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(*batch, N, D, generator=gen, dtype=torch.float32)
    mask = (torch.rand(*batch, N, A, generator=gen) < 0.7).float()
    mask[..., 0] = 1.0
    alive = (torch.rand(*batch, N, generator=gen) < 0.8).float()
    state = torch.randn(*batch, S, generator=gen, dtype=torch.float32)
    return obs, mask, alive, state


@pytest.mark.parametrize("batch", [(), (5,), (3, 2)])
def test_acting_agent_by_agent_equals_the_teacher_forced_pass_bit_for_bit(batch: tuple[int, ...]) -> None:
    policy = _policy().float()
    obs, mask, alive, state = _inputs(batch)
    torch.manual_seed(1)
    acted = policy.act(obs, mask, alive, sample_gates=True, sample_actions=True)
    assert acted.actions is not None and acted.actions.shape == (*batch, N)
    replay = policy(obs, mask, alive, state, gate_open=acted.gate_open, actions=acted.actions)
    assert torch.equal(replay.logits, acted.logits)  # the PPO ratio is exactly 1 before the first update
    assert mask.gather(-1, acted.actions.unsqueeze(-1)).all()  # masked actions are never drawn


def test_greedy_acting_takes_each_agents_argmax_given_the_earlier_greedy_actions() -> None:
    policy = _policy().float()
    obs, mask, alive, state = _inputs((16,), seed=2)
    acted = policy.act(obs, mask, alive)
    assert acted.actions is not None
    assert torch.equal(acted.actions, acted.logits.argmax(-1))
    # by hand: agent i's argmax from a pass on the greedy actions of agents 0..i-1 (later entries are placeholders)
    actions = torch.zeros(16, N, dtype=torch.long)
    for i in range(N):
        logits = policy(obs, mask, alive, state, actions=actions).logits[:, i]
        actions[:, i] = logits.argmax(-1)
    assert torch.equal(actions, acted.actions)


def test_later_agents_read_earlier_actions_only_along_graph_edges() -> None:
    """a_j moves agent i's logits if i hears j directly (j < i), and never if no chain of earlier agents links them
    (an action token carries what its agent heard, so j can reach i through an agent between them)."""
    policy = _policy(dataclasses.replace(CONFIG, gates=GateConfig(enabled=False))).double()
    obs, mask, _, state = (t.double() for t in _inputs((8,), seed=3))
    alive = torch.ones(8, N, dtype=torch.float64)
    actions = torch.zeros(8, N, dtype=torch.long)
    out = policy(obs, mask, alive, state, actions=actions)
    edge = out.adjacency[0] > 0  # (N, N), the same for every sample without gates
    reach = edge & torch.ones(N, N, dtype=torch.bool).tril(-1)  # i hears j, j < i
    for _ in range(N):  # transitive closure over chains of decreasing agent index
        reach = reach | ((reach.double() @ reach.double()) > 0)
    assert reach.any()
    for j in range(N):
        changed = actions.clone()
        changed[:, j] = 1
        moved = (policy(obs, mask, alive, state, actions=changed).logits - out.logits).abs().amax(-1)  # (B, N)
        for i in range(N):
            if not reach[i, j]:
                assert (moved[:, i] == 0).all(), (i, j)
            if edge[i, j] and j < i:
                assert (moved[:, i] > 0).all(), (i, j)


def test_no_communication_makes_every_agent_ignore_the_others_actions() -> None:
    policy = _policy(dataclasses.replace(CONFIG, communicate=False)).double()
    obs, mask, alive, state = (t.double() for t in _inputs((6,), seed=4))
    out = policy(obs, mask, alive, state, actions=torch.zeros(6, N, dtype=torch.long))
    again = policy(obs, mask, alive, state, actions=torch.full((6, N), 2, dtype=torch.long))
    assert torch.equal(out.logits, again.logits)


def test_the_decoder_and_the_graph_get_gradients_through_the_policy_loss() -> None:
    policy = _policy(dataclasses.replace(CONFIG, gates=GateConfig(enabled=False))).double()  # every receiver open
    obs, mask, alive, state = (t.double() for t in _inputs((32,), seed=5))
    actions = torch.randint(0, A, (32, N))
    out = policy(obs, torch.ones_like(mask), torch.ones_like(alive), state, actions=actions)
    out.logits.log_softmax(-1).gather(-1, actions.unsqueeze(-1)).sum().backward()
    assert policy.decoder is not None
    for name, param in policy.decoder.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert policy.trunk.graph.logits.grad is not None and policy.trunk.graph.logits.grad.abs().sum() > 0


def test_bad_combinations_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"model\.decoder='autoregressive' with model\.early_exit\.enabled=true"):
        dataclasses.replace(CONFIG, early_exit=EarlyExitConfig(enabled=True))
    with pytest.raises(ValueError, match=r"model\.decoder="):
        dataclasses.replace(CONFIG, decoder="parallel")
    with pytest.raises(ValueError, match=r"model\.decoder_blocks"):
        dataclasses.replace(CONFIG, decoder_blocks=0)
    policy = _policy().float()
    obs, mask, alive, state = _inputs((2,))
    with pytest.raises(ValueError, match=r"actions is None but model\.decoder='autoregressive'"):
        policy(obs, mask, alive, state)
    with pytest.raises(ValueError, match=r"actions has shape \(2, 3\); expected \(2, 4\)"):
        policy(obs, mask, alive, state, actions=torch.zeros(2, 3, dtype=torch.long))
    encoder_only = _policy(dataclasses.replace(CONFIG, decoder="none")).float()
    with pytest.raises(ValueError, match=r"actions were given but the policy has no decoder"):
        encoder_only(obs, mask, alive, state, actions=torch.zeros(2, N, dtype=torch.long))


def test_moe_heads_compose_with_the_decoder() -> None:
    policy = _policy(dataclasses.replace(CONFIG, head="moe")).float()
    obs, mask, alive, state = _inputs((4,), seed=6)
    torch.manual_seed(2)
    acted = policy.act(obs, mask, alive, sample_actions=True)
    replay = policy(obs, mask, alive, state, actions=acted.actions)
    assert torch.equal(replay.logits, acted.logits) and "policy" in replay.moe


def test_an_exported_decoder_policy_loads_and_acts_the_same(tmp_path) -> None:
    policy = _policy().float().eval()
    save_policy(policy, tmp_path, {"n_agents": N, "obs_dim": D, "n_actions": A, "state_dim": S}, {})
    loaded, _ = load_policy(tmp_path)
    loaded = loaded.float()  # built in the tests' default float64, holding the saved float32 values
    assert loaded.config.decoder == "autoregressive" and loaded.decoder is not None
    obs, mask, alive, _ = _inputs((7,), seed=7)
    ours, theirs = policy.act(obs, mask, alive), loaded.act(obs, mask, alive)
    assert ours.actions is not None and theirs.actions is not None
    assert torch.equal(ours.actions, theirs.actions) and torch.equal(ours.logits, theirs.logits)
