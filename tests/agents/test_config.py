"""Experiment configs: every shipped YAML loads, overrides apply, and each kind of bad input is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.config import (
    ConfigError,
    ExperimentConfig,
    experiment_from_mapping,
    load_config,
    save_config,
    to_dict,
)

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"mpe_spread.yaml", "mpe_reference.yaml", "mpe_speaker_listener.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config.run.name is not None and config.run.name.startswith(path.stem)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_fits_its_env(path):
    from agents.build import probe_env
    from envs.registry import ENVS

    config = load_config(path)
    entry = ENVS.get(config.env.name)  # None: an env by import path (configs/custom.yaml), always available
    reason = entry.unavailable() if entry is not None else None
    if reason is not None:  # tests/envs/test_smacv2.py fits these configs against the smacv2 stand-in
        pytest.skip(reason)
    spaces = probe_env(config)
    assert spaces.n_agents >= 1


def test_overrides_apply_with_yaml_types():
    config = load_config(
        None,
        ["model.graph.sparsity=0.5", "run.seed=7", "model.gates.enabled=false", "env.options.n_agents=5"],
    )
    assert config.model.graph.sparsity == 0.5
    assert config.run.seed == 7
    assert config.model.gates.enabled is False
    assert config.env.options.n_agents == 5


def test_int_is_accepted_for_float_but_not_bool_for_int():
    assert load_config(None, ["training.lr=1"]).training.lr == 1.0
    with pytest.raises(ConfigError, match=r"run\.seed=True; expected an integer"):
        load_config(None, ["run.seed=true"])


def test_defaults_without_env_section_have_typed_options():
    config = experiment_from_mapping({})
    assert to_dict(config)["env"]["options"]["n_agents"] == 3


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.graph.sparsty=0.4", r"unknown config key 'model\.graph\.sparsty'"),
        ("trainig.lr=0.1", r"unknown config key 'trainig'"),
        ("env.options.n_agent=3", r"unknown option env\.options\.n_agent"),
        ("model.embed_dim=big", r"model\.embed_dim='big'; expected an integer"),
        ("model.graph.sparsity=1.5", r"model\.graph\.sparsity"),
        ("model.graph.sparsity=0", r"model\.graph\.sparsity"),
        ("training.lr=-0.001", r"training\.lr=-0\.001; expected a value > 0"),
        ("training.graph_lr=0", r"training\.graph_lr"),
        ("resources.num_envs_per_env_runner=0", r"resources\.num_envs_per_env_runner=0"),
        ("resources.learner_threads=0", r"resources\.learner_threads=0; expected a value > 0"),
        ("training.minibatch_size=5000", r"training\.minibatch_size=5000 is larger"),
        ("env.name=nope", r"env\.name='nope' is not a known env; expected one of: .*mpe_spread"),
        ("env.team_reward=max", r"env\.team_reward='max'; expected one of: mean, sum"),
        ("stop.env_steps=0", r"stop\.env_steps=0"),
        ("run.seed", r"not of the form dotted\.key=value"),
        ("model.encoder=lstm", r"model\.encoder='lstm'; expected one of: mlp, orchid, attention"),
        ("model.history=8", r"model\.history=8 but model\.encoder='mlp'"),
        ("model.history=0", r"model\.history=0; expected an integer in \[1, 4096\]"),
        ("model.orchid.max_len=5", r"model\.orchid\.max_len=5 contradicts model\.history=1"),
        ("model.orchid.conditioning=type3", r"model\.orchid\.conditioning='type3'"),
        ("training.sample_ahead=true", r"training\.sample_ahead=true needs resources\.num_env_runners >= 1"),
    ],
)
def test_bad_values_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_k_larger_than_the_team_is_refused_against_the_env():
    from agents.build import probe_env

    config = load_config(None, ["model.graph.k=5", "env.options.n_agents=3"])
    with pytest.raises(ConfigError, match=r"model\.graph\.k=5 .*N=3"):
        probe_env(config)


def test_a_graph_warm_up_is_refused_where_attention_gathers_before_any_work():
    from agents.build import probe_env

    overrides = [
        "configs/signal.yaml",
        ["env.options.n_agents=32", "model.graph.k=1", "model.graph.warmup_fraction=0.1"],
    ]
    with pytest.raises(ConfigError, match=r"model\.graph\.warmup_fraction=0\.1 needs the dense layout"):
        probe_env(load_config(*overrides))


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(scalar)


def test_the_env_window_is_derived_from_the_model():
    """The user sets model.history only; the env config that travels to the EnvRunners carries it."""
    from agents.build import env_config_dict, make_env_from_dict

    config = load_config("configs/memory_orchid.yaml", ["model.history=70"])
    assert config.model.encoder == "orchid" and config.model.orchid.max_len == 70
    env = make_env_from_dict(env_config_dict(config))
    assert env.observation_space["history"].shape == (70, 2, 6)
    mlp = load_config("configs/memory_orchid.yaml", ["model.encoder=mlp", "model.history=1"])
    assert env_config_dict(mlp)["history"] == 0
    assert "history" not in make_env_from_dict(env_config_dict(mlp)).observation_space.spaces


def test_a_policy_refuses_an_env_window_of_another_length():
    from agents.rl_module import TeamDims, build_policy

    config = load_config("configs/memory_orchid.yaml")
    with pytest.raises(
        ValueError, match=r"history window of 10 steps but model\.encoder='orchid' with model\.history=72"
    ):
        build_policy(config.model, TeamDims(n_agents=2, obs_dim=6, n_actions=4, state_dim=None, history=10))


@pytest.mark.parametrize("key", ["lr_end", "entropy_coeff_end"])
def test_negative_schedule_ends_are_refused(key):
    with pytest.raises(ConfigError, match=f"training.{key}=-0.1; expected a value >= 0"):
        load_config("configs/signal.yaml", [f"training.{key}=-0.1"])
