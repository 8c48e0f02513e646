"""Weights saved by earlier versions of the policy still load, into the same parameters, and act the same.

The fixtures (tests/model/fixtures/, written by its make_legacy.py with the code of that time) are exported
policies whose parameter names predate the split of the policy into encoder, trunk and heads, with their outputs on
fixed inputs. RLlib checkpoints hold the same names (``policy.<name>`` in the RLModule state), so this is also what
keeps old checkpoints loadable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from commformer.config import EarlyExitConfig, ModelConfig
from commformer.export import SPEC, WEIGHTS, PolicyFileError, load_policy
from commformer.policy import CommFormerPolicy, current_name
from tests.model.fixtures.make_legacy import outputs

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(path.name for path in FIXTURES.iterdir() if (path / WEIGHTS).is_file())


def test_the_fixtures_are_there() -> None:
    assert CASES == ["attention_nostate", "mlp_state_linear", "orchid_moe_exits"]


@pytest.mark.parametrize("case", CASES)
def test_a_legacy_export_loads_into_the_same_parameters_in_the_same_order(case: str) -> None:
    """Every saved tensor lands in a parameter, and the parameters keep their order: the optimizer's state in an
    RLlib checkpoint is a list in that order, so a reordering would hand one parameter another's Adam moments."""
    policy, metadata = load_policy(FIXTURES / case)
    saved = load_file(FIXTURES / case / WEIGHTS)
    order = metadata["parameter_order"]
    assert len(order) == len(list(policy.parameters()))
    for old_name, param in zip(order, policy.parameters(), strict=True):
        assert torch.equal(param.detach().to(saved[old_name].dtype), saved[old_name]), old_name


@pytest.mark.parametrize("case", CASES)
def test_a_legacy_export_reproduces_its_outputs_exactly(case: str) -> None:
    torch.set_default_dtype(torch.float32)  # the fixtures are float32 (the conftest fixture restores the default)
    policy, _ = load_policy(FIXTURES / case)
    reference = load_file(FIXTURES / case / "reference.safetensors")
    inputs = {name.removeprefix("input."): tensor for name, tensor in reference.items() if name.startswith("input.")}
    got = outputs(policy, inputs)  # the calls that recorded the reference
    assert set(got) == {name for name in reference if not name.startswith("input.")}
    for name, tensor in got.items():
        assert torch.equal(tensor, reference[name]), name


@pytest.mark.parametrize("case", CASES)
def test_a_legacy_state_dict_loads_inside_an_rl_module(case: str) -> None:
    """RLlib restores an RLModule's state with ``strict=False`` under the prefix ``policy.``: the old names must
    still land in the policy's parameters rather than be skipped as unexpected keys."""
    policy, _ = load_policy(FIXTURES / case)
    saved = load_file(FIXTURES / case / WEIGHTS)
    module = nn.Module()
    module.policy = CommFormerPolicy(policy.config, policy.n_agents, policy.obs_dim, policy.n_actions, policy.state_dim)
    missing, unexpected = module.load_state_dict({f"policy.{k}": v for k, v in saved.items()}, strict=False)
    assert missing == [] and unexpected == []
    for (name, mine), theirs in zip(module.policy.state_dict().items(), policy.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(embed_dim=8, num_heads=2),
        ModelConfig(embed_dim=8, head="moe", value_head="moe", encoder="orchid", history=3),
        ModelConfig(embed_dim=8, encoder="attention", history=2, early_exit=EarlyExitConfig(enabled=True)),
    ],
)
def test_current_names_are_left_as_they_are(config: ModelConfig) -> None:
    policy = CommFormerPolicy(config, n_agents=3, obs_dim=5, n_actions=4, state_dim=6)
    names = list(policy.state_dict())
    assert [current_name(name) for name in names] == names


def test_an_unknown_format_version_is_refused_by_number(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / CASES[0], tmp_path / "p")
    spec = json.loads((tmp_path / "p" / SPEC).read_text())
    (tmp_path / "p" / SPEC).write_text(json.dumps(spec | {"version": 99}))
    with pytest.raises(PolicyFileError, match=r"has version 99; this build reads versions \[1, 2\]"):
        load_policy(tmp_path / "p")
