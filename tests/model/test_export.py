"""Exported policies (commformer/export.py) refuse damaged or inconsistent files with a PolicyFileError naming the
file and what was expected, before building anything of a size the weights file does not hold."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from commformer import export
from commformer.config import ModelConfig
from commformer.export import HASH_KEY, SPEC, WEIGHTS, PolicyFileError, load_policy, save_policy
from commformer.policy import CommFormerPolicy

N, D, A, S = 3, 5, 4, 6
DIMS = {"n_agents": N, "obs_dim": D, "n_actions": A, "state_dim": S}
SMALL = ModelConfig(embed_dim=8, num_heads=2, num_blocks=2, mlp_ratio=2)
_DROP = object()
"""Marks a key `_edit_spec` removes."""


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    policy = CommFormerPolicy(SMALL, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    return save_policy(policy, tmp_path / "p", dict(DIMS), {"note": "x"})


def _edit_spec(directory: Path, **changes: Any) -> None:
    spec = json.loads((directory / SPEC).read_text())
    for key, value in changes.items():
        if value is _DROP:
            spec.pop(key)
        else:
            spec[key] = value
    (directory / SPEC).write_text(json.dumps(spec))


def _data_offset(weights: Path) -> int:
    """Where the tensor bytes begin: safetensors is an 8-byte little-endian header length, the JSON header, data."""
    (header_len,) = struct.unpack("<Q", weights.read_bytes()[:8])
    return 8 + header_len


def _overwrite_data(weights: Path, byte: int) -> None:
    """Replaces every tensor byte, leaving the header (names, shapes, offsets) intact."""
    raw = weights.read_bytes()
    start = _data_offset(weights)
    weights.write_bytes(raw[:start] + bytes([byte]) * (len(raw) - start))


def test_save_records_the_sha256_of_the_weights_file_and_the_policy_round_trips(saved: Path) -> None:
    spec = json.loads((saved / SPEC).read_text())
    assert spec[HASH_KEY] == hashlib.sha256((saved / WEIGHTS).read_bytes()).hexdigest()
    assert spec["version"] == 2  # an optional key: no new version (see the module docstring)
    policy, metadata = load_policy(saved)
    assert metadata == {"note": "x"}
    torch.manual_seed(0)
    original = CommFormerPolicy(SMALL, n_agents=N, obs_dim=D, n_actions=A, state_dim=S)
    for (name, mine), theirs in zip(policy.state_dict().items(), original.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name


def test_weights_damaged_behind_an_intact_header_are_refused_by_their_sha256(saved: Path) -> None:
    _overwrite_data(saved / WEIGHTS, 0x3F)  # every float32 is 0.747..., finite: only the hash tells
    with pytest.raises(PolicyFileError, match=r"policy\.safetensors' has sha256 [0-9a-f]{64}, but .*policy\.json"):
        load_policy(saved)


def test_a_file_without_a_sha256_still_loads_and_non_finite_weights_are_refused(saved: Path) -> None:
    _edit_spec(saved, **{HASH_KEY: _DROP})  # as written before the key existed
    load_policy(saved)
    _overwrite_data(saved / WEIGHTS, 0xFF)  # NaN in every float32
    with pytest.raises(PolicyFileError, match=r"policy\.safetensors' holds non-finite values in '"):
        load_policy(saved)


@pytest.mark.parametrize("value", ["abc", 3, "A" * 64, None])
def test_a_malformed_sha256_is_refused(saved: Path, value: Any) -> None:
    _edit_spec(saved, **{HASH_KEY: value})
    with pytest.raises(PolicyFileError, match=f"has {HASH_KEY}=.*; expected 64 lowercase hex digits"):
        load_policy(saved)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", r"holds a JSON list; expected a commformer-policy description \(a JSON object\)"),
        ('"policy"', r"holds a JSON str; expected"),
        ("[" * 200_000 + "]" * 200_000, r"is nested too deeply to be a policy description"),
        ('{"format": "commformer-policy", "version": true}', r"has version True; this build reads versions"),
    ],
)
def test_a_description_that_is_not_an_object_of_this_format_is_refused(saved: Path, text: str, message: str) -> None:
    (saved / SPEC).write_text(text)
    with pytest.raises(PolicyFileError, match=r"policy\.json' " + message):
        load_policy(saved)


def test_an_oversized_description_is_refused_unread(saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "MAX_SPEC_BYTES", 100)
    with pytest.raises(PolicyFileError, match=r"policy\.json' is \d+ bytes; expected .* at most 100 bytes"):
        load_policy(saved)


@pytest.mark.parametrize(
    ("dims", "message"),
    [
        ([3, 5, 4], r"dims is \[3, 5, 4\]; expected an object"),
        ({"obs_dim": D, "n_actions": A}, r"dims\.n_agents is missing; expected an integer in \[1, 4096\]"),
        (DIMS | {"n_agents": 30000}, r"dims\.n_agents=30000; expected an integer in \[1, 4096\]"),
        (DIMS | {"n_agents": 0}, r"dims\.n_agents=0; expected an integer"),
        (DIMS | {"obs_dim": "5"}, r"dims\.obs_dim='5'; expected an integer"),
        (DIMS | {"obs_dim": 5.0}, r"dims\.obs_dim=5\.0; expected an integer"),
        (DIMS | {"n_actions": True}, r"dims\.n_actions=True; expected an integer"),
        (DIMS | {"state_dim": -1}, r"dims\.state_dim=-1; expected an integer"),
    ],
)
def test_dims_out_of_range_or_of_the_wrong_type_are_refused(saved: Path, dims: Any, message: str) -> None:
    _edit_spec(saved, dims=dims)
    with pytest.raises(PolicyFileError, match=r"policy\.json' does not describe a valid policy: " + message):
        load_policy(saved)


def test_metadata_that_is_not_an_object_is_refused(saved: Path) -> None:
    _edit_spec(saved, metadata=["env"])
    with pytest.raises(PolicyFileError, match=r"metadata is \['env'\]; expected a JSON object"):
        load_policy(saved)


@pytest.mark.parametrize(
    ("dims", "tensor", "in_file", "expected"),
    [
        (DIMS | {"obs_dim": D + 2}, "encoder.obs_embed.0.weight", [D], [D + 2]),
        (DIMS | {"n_actions": A + 1}, "policy_head.mlp.out.weight", [A, 8], [A + 1, 8]),
        (DIMS | {"state_dim": S - 1}, "value_head.state_embed.0.weight", [S], [S - 1]),
        (DIMS | {"n_agents": 4000}, "encoder.agent_embed.weight", [N, 8], [4000, 8]),
    ],
)
def test_dims_that_do_not_match_the_weights_are_refused_before_the_policy_is_built(
    saved: Path, monkeypatch: pytest.MonkeyPatch, dims: dict, tensor: str, in_file: list, expected: list
) -> None:
    """The shapes are compared with the file's header on a policy built on the meta device: no policy of the
    described size is ever allocated (n_agents=4000 would be a 4000 x 4000 graph)."""
    built: list[torch.device] = []

    def recording(*args: Any, **kwargs: Any) -> CommFormerPolicy:
        policy = CommFormerPolicy(*args, **kwargs)
        built.append(next(policy.parameters()).device)
        return policy

    monkeypatch.setattr(export, "CommFormerPolicy", recording)
    _edit_spec(saved, dims=dims)
    pattern = rf"policy\.safetensors' does not match .*policy\.json' \(dims .*\): '{tensor}' has shape "
    pattern += rf"{json.dumps(in_file)} in the file, expected {json.dumps(expected)}".replace("[", r"\[")
    with pytest.raises(PolicyFileError, match=pattern):
        load_policy(saved)
    assert built and all(device.type == "meta" for device in built)


def test_a_model_section_that_names_other_tensors_is_refused(saved: Path) -> None:
    spec = json.loads((saved / SPEC).read_text())
    spec["model"]["early_exit"]["enabled"] = True  # exit heads the file does not hold
    (saved / SPEC).write_text(json.dumps(spec))
    with pytest.raises(PolicyFileError, match=r"policy\.safetensors' does not match .*: missing \['exits\."):
        load_policy(saved)


def test_an_absurd_number_of_blocks_is_refused_before_a_module_is_built(
    saved: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = json.loads((saved / SPEC).read_text())
    spec["model"]["num_blocks"] = 10**7
    (saved / SPEC).write_text(json.dumps(spec))
    monkeypatch.setattr(export, "CommFormerPolicy", None)  # building would fail with a TypeError
    with pytest.raises(PolicyFileError, match=r"model\.num_blocks=10000000; expected an integer in \[1, 64\]"):
        load_policy(saved)


# ---------------------------------------------------------------------------------------------- continuous actions


@pytest.mark.parametrize("log_std", ["parameter", "state"])
def test_a_continuous_policy_round_trips_with_its_action_kind_and_acts_the_same(tmp_path: Path, log_std: str) -> None:
    config = ModelConfig(embed_dim=8, log_std=log_std, log_std_init=-0.5)  # type: ignore[arg-type]
    torch.manual_seed(0)
    policy = CommFormerPolicy(config, n_agents=N, obs_dim=D, n_actions=A, state_dim=S, continuous=True).eval()
    with torch.no_grad():  # weights that differ from the initial ones, so a rebuilt default could not pass
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    saved = save_policy(policy, tmp_path / "c", {**DIMS, "action_kind": "continuous"}, {})
    assert json.loads((saved / SPEC).read_text())["dims"]["action_kind"] == "continuous"
    loaded, _ = load_policy(saved)
    assert loaded.continuous and loaded.config.log_std == log_std and loaded.dist_dim == 2 * A
    obs = torch.randn(4, N, D)
    torch.testing.assert_close(loaded.act(obs).actions, policy.act(obs).actions, rtol=0, atol=0)
    state = torch.randn(4, S)
    torch.testing.assert_close(loaded(obs, state=state).logits, policy(obs, state=state).logits, rtol=0, atol=0)


def test_a_continuous_policy_described_as_discrete_or_of_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    policy = CommFormerPolicy(ModelConfig(embed_dim=8), n_agents=N, obs_dim=D, n_actions=A, continuous=True)
    saved = save_policy(policy, tmp_path / "c", {**DIMS, "state_dim": None, "action_kind": "continuous"}, {})
    _edit_spec(saved, dims={**DIMS, "state_dim": None})  # a reader that does not know action_kind builds discrete
    with pytest.raises(PolicyFileError, match=r"unexpected \['policy_head.log_std'\]"):
        load_policy(saved)
    _edit_spec(saved, dims={**DIMS, "state_dim": None, "action_kind": "box"})
    with pytest.raises(PolicyFileError, match=r"dims\.action_kind='box'; expected 'discrete' or 'continuous'"):
        load_policy(saved)


def test_the_senders_a_graph_holds_travel_with_an_exported_policy(tmp_path: Path) -> None:
    from commformer.config import GraphConfig

    config = ModelConfig(embed_dim=8, num_heads=2, num_blocks=1, graph=GraphConfig(k=1, switch_margin=0.1))
    policy = CommFormerPolicy(config, n_agents=4, obs_dim=D, n_actions=A, state_dim=S)
    graph = policy.trunk.graph
    with torch.no_grad():
        graph.logits[0, 3] = 1.5
    assert graph.settle() == 1
    with torch.no_grad():
        graph.logits[0, 3] = 0.95  # the top-k would now take sender 1 back; the held graph keeps 3
    held = graph.hard()
    assert held[0].tolist() == [1.0, 0.0, 0.0, 1.0] and graph.hard().sum() == 8  # one sender each
    from commformer.graph import hard_topk

    assert hard_topk(graph.logits, 1)[0].tolist() == [1.0, 1.0, 0.0, 0.0]
    loaded, _ = load_policy(save_policy(policy, tmp_path / "p", {**DIMS, "n_agents": 4}, {}))
    assert torch.equal(loaded.trunk.graph.hard(), held)


def test_a_graph_warm_up_ended_in_training_stays_ended_in_the_exported_policy(tmp_path: Path) -> None:
    """model.graph.warmup_fraction: an exported policy built from its config starts in the warm-up; the saved flag
    says whether training ended it, so the loaded policy hears what the trained one heard."""
    from commformer.config import GraphConfig

    config = ModelConfig(embed_dim=8, num_heads=2, num_blocks=1, graph=GraphConfig(k=1, warmup_fraction=0.5))
    policy = CommFormerPolicy(config, n_agents=4, obs_dim=D, n_actions=A, state_dim=S)
    graph = policy.trunk.graph
    for ended in (False, True):
        if ended:
            graph.end_warmup()
        loaded, _ = load_policy(save_policy(policy, tmp_path / f"p{ended}", {**DIMS, "n_agents": 4}, {}))
        assert loaded.trunk.graph.hears_all is not ended
        assert torch.equal(loaded.trunk.graph.hard(), graph.hard())
        assert loaded.trunk.graph.hard().sum() == (8 if ended else 16)
