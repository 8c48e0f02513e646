"""Model config validation: every error names the dotted field and what was expected."""

from __future__ import annotations

import dataclasses

import pytest

from commformer.config import GateConfig, GraphConfig, ModelConfig
from commformer.layers.orchid import OrchidConfig


@pytest.mark.parametrize(
    ("n_agents", "sparsity", "expected"),
    [(1, 0.4, 0), (2, 0.4, 1), (3, 0.4, 1), (5, 0.5, 3), (8, 0.4, 3), (10, 0.4, 4), (25, 0.4, 10),
     (3, 1.0, 2), (8, 0.01, 1)],
)  # fmt: skip
def test_senders_from_sparsity(n_agents: int, sparsity: float, expected: int) -> None:
    assert GraphConfig(sparsity=sparsity).senders(n_agents) == expected


def test_explicit_k() -> None:
    assert GraphConfig(k=2).senders(3) == 2
    with pytest.raises(ValueError, match=r"model\.graph\.k=5 but the environment has N=3 agents; expected 1 <= k <= 2"):
        GraphConfig(k=5).senders(3)
    with pytest.raises(ValueError, match=r"model\.graph\.k=1 but the environment has N=1 agents"):
        GraphConfig(k=1).senders(1)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (GraphConfig, {"sparsity": 0.0}, r"model\.graph\.sparsity=0\.0; expected a number in \(0, 1\]"),
        (GraphConfig, {"sparsity": 1.5}, r"model\.graph\.sparsity=1\.5"),
        (GraphConfig, {"sparsity": float("nan")}, r"model\.graph\.sparsity=nan; expected a finite"),
        (GraphConfig, {"k": 0}, r"model\.graph\.k=0; expected an integer >= 1"),
        (GraphConfig, {"gumbel_tau": 0.0}, r"model\.graph\.gumbel_tau=0\.0; expected a number > 0"),
        (GraphConfig, {"gumbel": "yes"}, r"model\.graph\.gumbel='yes' \(str\); expected true or false"),
        (GraphConfig, {"probes": -1}, r"model\.graph\.probes=-1; expected an integer >= 0"),
        (GraphConfig, {"probes": 2.0}, r"model\.graph\.probes=2\.0 \(float\); expected an integer >= 0"),
        (GraphConfig, {"switch_margin": -0.1}, r"model\.graph\.switch_margin=-0\.1; expected a number >= 0"),
        (GraphConfig, {"switch_margin": "x"}, r"model\.graph\.switch_margin='x' \(str\)"),
        (GraphConfig, {"held_product": 1}, r"model\.graph\.held_product=1 \(int\); expected true or false"),
        (GraphConfig, {"warmup_fraction": 1.0}, r"model\.graph\.warmup_fraction=1\.0; expected a number in \[0, 1\)"),
        (GraphConfig, {"warmup_fraction": -0.1}, r"model\.graph\.warmup_fraction=-0\.1; expected a number in \[0, 1\)"),
        (GateConfig, {"cost_weight": -0.1}, r"model\.gates\.cost_weight=-0\.1; expected a number >= 0"),
        (GateConfig, {"enabled": 1}, r"model\.gates\.enabled=1 \(int\); expected true or false"),
        (GateConfig, {"target_open_rate": 0.0}, r"model\.gates\.target_open_rate=0\.0; expected a number in \(0, 1\]"),
        (GateConfig, {"target_open_rate": 1.5}, r"model\.gates\.target_open_rate=1\.5; expected a number in \(0, 1\]"),
        (GateConfig, {"budget_lr": 0.0}, r"model\.gates\.budget_lr=0\.0; expected a number > 0"),
        (GateConfig, {"budget_lr": 0.01}, r"budget_lr=0\.01 is set but model\.gates\.target_open_rate is not"),
        (ModelConfig, {"embed_dim": 0}, r"model\.embed_dim=0; expected an integer in \[1, 4096\]"),
        (ModelConfig, {"num_heads": True}, r"model\.num_heads=True \(bool\); expected an integer"),
        (ModelConfig, {"num_blocks": 1.0}, r"model\.num_blocks=1\.0 \(float\); expected an integer"),
        (ModelConfig, {"mlp_ratio": -1}, r"model\.mlp_ratio=-1"),
        (ModelConfig, {"activation": "tanh"}, r"model\.activation='tanh'; expected one of 'gelu', 'relu', 'silu'"),
        (
            ModelConfig,
            {"embed_dim": 10, "num_heads": 4},
            r"model\.embed_dim=10 is not divisible by model\.num_heads=4",
        ),
        (ModelConfig, {"graph": {"sparsity": 0.5}}, r"model\.graph is a dict; expected a GraphConfig"),
    ],
)
def test_validation_names_the_field(cls: type, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_defaults_are_valid_and_frozen() -> None:
    config = ModelConfig()
    assert config.graph == GraphConfig() and config.gates == GateConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.embed_dim = 32  # type: ignore[misc]
    assert dataclasses.replace(config, graph=GraphConfig(k=2)).graph.k == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"encoder": "lstm"}, r"model\.encoder='lstm'; expected one of 'mlp', 'orchid', 'attention'"),
        ({"encoder": "orchid", "history": 0}, r"model\.history=0; expected an integer in \[1, 4096\]"),
        ({"encoder": "orchid", "history": 8.0}, r"model\.history=8\.0 \(float\); expected an integer"),
        ({"history": 8}, r"model\.history=8 but model\.encoder='mlp' reads the current observation only"),
        (
            {"encoder": "orchid", "history": 8, "orchid": OrchidConfig(max_len=16)},
            r"model\.orchid\.max_len=16 contradicts model\.history=8",
        ),
        ({"orchid": {"max_len": 8}}, r"model\.orchid is a dict; expected a OrchidConfig"),
    ],
)
def test_encoder_and_history_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


def test_orchid_window_is_derived_from_history() -> None:
    config = ModelConfig(encoder="orchid", history=1024)
    assert config.orchid.max_len == 1024 and config.env_history == 1024
    # Stating the same value again is allowed; the default is replaced.
    assert ModelConfig(encoder="orchid", history=64, orchid=OrchidConfig(max_len=64)).orchid.max_len == 64
    assert ModelConfig(encoder="attention", history=3).env_history == 3
    assert ModelConfig().env_history == 0 and ModelConfig().history == 1
