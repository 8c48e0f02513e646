"""The experiment configuration: one typed tree, loaded from YAML plus dotted overrides.

Every YAML file in `configs/` maps onto `ExperimentConfig`. Keys are the dataclass field names, and the same
names are used on the command line (`model.graph.sparsity=0.4`). Loading is strict: an unknown key, a value of
the wrong type or a value out of range raises `ConfigError` naming the dotted key and what was expected,
before Ray starts (docs/DESIGN.md, "Configuration").
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from commformer.config import ModelConfig
from commformer.typed import Converter, from_mapping, to_dict
from commformer.validate import ConfigError, require_at_least, require_in_range, require_positive
from envs import custom
from envs.registry import ENVS, is_custom, make_options

__all__ = ["ConfigError", "ExperimentConfig", "check_run_name", "from_mapping", "load_config", "save_config", "to_dict"]


@dataclass(frozen=True)
class EnvConfig:
    """Which environment the team plays, and how its rewards are combined."""

    name: str = "mpe_spread"
    """An entry of `envs.registry.ENVS` (see `commformer envs`), or the import path of any PettingZoo env module
    (one with `parallel_env` or `env`, e.g. `pettingzoo.sisl.pursuit_v5`); with `factory`, a free label."""
    factory: str | None = None
    """`module.path:callable` that builds a PettingZoo ParallelEnv or AECEnv from `options` (keyword arguments);
    None: the table env or env module `name` names (envs/custom.py)."""
    options: Any = None
    """The env's own typed options (a dataclass from `ENVS[name].options_cls`); YAML gives a mapping. For an env by
    import path, the plain keyword arguments of its factory (envs.custom.check_options)."""
    team_reward: Literal["mean", "sum"] = "mean"
    """How the agents' rewards become the one team reward."""
    use_state: bool = True
    """Expose the env's global state (when it has one) to the centralised value head."""


@dataclass(frozen=True)
class TrainingConfig:
    """PPO and bi-level optimisation settings."""

    train_batch_size: int = 4000
    """Env steps collected per training iteration (over all env runners)."""
    minibatch_size: int = 1000
    """Env steps per gradient step."""
    num_epochs: int = 5
    """Passes over each train batch."""
    lr: float = 5e-4
    """Adam learning rate of the lower level (every parameter except the graph logits)."""
    lr_end: float | None = None
    """If set, the lower level's learning rate goes linearly from ``lr`` at the start to ``lr_end`` at
    ``stop.env_steps`` (sampled env steps), as MAPPO and JaxMARL anneal theirs; None keeps ``lr``."""
    graph_lr: float = 1e-3
    """Adam learning rate of the upper level (the communication-graph logits)."""
    adam_eps: float = 1e-5
    grad_clip: float = 10.0
    """Global-norm gradient clip, per optimizer."""
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_param: float = 0.2
    """PPO ratio clip, applied to each agent's own ratio."""
    entropy_coeff: float = 0.01
    entropy_coeff_end: float | None = None
    """If set, the entropy bonus goes linearly from ``entropy_coeff`` to this at ``stop.env_steps``."""
    vf_loss_coeff: float = 1.0
    huber_delta: float = 10.0
    """Huber threshold of the value loss (in normalised units when value_norm is on)."""
    value_norm: bool = True
    """Regress values onto running-normalised returns (MAPPO/CommFormer ValueNorm)."""
    graph_every: int = 5
    """Every graph_every-th gradient step updates only the graph logits; the others only the rest."""
    graph_freeze_fraction: float = 1.0
    """Stop updating the graph after this fraction of stop.env_steps (1.0: never freeze)."""
    sample_ahead: bool = False
    """The remote EnvRunners sample the next batch while the Learner updates on this one: each batch then comes
    from the weights one update before those it trains (policy lag 1; agents/algorithm.py). Needs
    ``resources.num_env_runners >= 1``."""

    def __post_init__(self) -> None:
        _positive(self, "training", ("train_batch_size", "minibatch_size", "num_epochs", "graph_every"))
        _positive(self, "training", ("lr", "graph_lr", "adam_eps", "grad_clip", "clip_param", "huber_delta"))
        _in_range(self, "training", "gamma", 0.0, 1.0)
        _in_range(self, "training", "gae_lambda", 0.0, 1.0)
        _in_range(self, "training", "graph_freeze_fraction", 0.0, 1.0)
        if self.entropy_coeff < 0 or self.vf_loss_coeff < 0:
            raise ConfigError("training.entropy_coeff and training.vf_loss_coeff must be >= 0")
        if self.lr_end is not None and self.lr_end < 0:
            raise ConfigError(f"training.lr_end={self.lr_end}; expected a value >= 0 (or leave it out)")
        if self.entropy_coeff_end is not None and self.entropy_coeff_end < 0:
            raise ConfigError(
                f"training.entropy_coeff_end={self.entropy_coeff_end}; expected a value >= 0 (or leave it out)"
            )
        if self.minibatch_size > self.train_batch_size:
            raise ConfigError(
                f"training.minibatch_size={self.minibatch_size} is larger than "
                f"training.train_batch_size={self.train_batch_size}; expected minibatch_size <= train_batch_size"
            )


MAX_ENVS_PER_RUNNER = 4096
"""Env copies one EnvRunner may hold (a million simple_spread copies reached 3.2 GB in 17 s before failing)."""


@dataclass(frozen=True)
class ResourcesConfig:
    """How the work is spread over processes, nodes and devices (checked against the cluster before training)."""

    num_env_runners: int = 0
    """Remote EnvRunner actors; 0 samples in the driver process (fastest on a 2-core machine)."""
    num_envs_per_env_runner: int = 16
    """Vectorised env copies per runner; inference is batched across them (at most MAX_ENVS_PER_RUNNER)."""
    num_cpus_per_env_runner: float = 1.0
    custom_resources_per_env_runner: dict[str, float] = field(default_factory=dict)
    """Ray custom resources each remote EnvRunner needs, e.g. `{rollout: 1}` to place the runners on the nodes
    started with `ray start --resources='{"rollout": N}'` (docker/cluster.yaml's CPU rollout nodes)."""
    num_learners: int = 0
    """Remote Learner actors; 0 updates in the driver. With >= 2 the update is data-parallel (DDP)."""
    num_cpus_per_learner: float = 1.0
    """CPUs each remote Learner reserves (with no GPU it also computes on them)."""
    learner_threads: int = 1
    """Torch intra-op threads while a Learner updates (the driver's own Learner or each remote one); everything
    else keeps one thread. PPO's EnvRunners wait for the update, so on one machine its cores are otherwise idle;
    worth it for minibatches of ~1,000 team steps and more (docs/BENCHMARKS.md, SMAX speed and throughput)."""
    num_gpus_per_learner: float = 0.0
    """GPUs per Learner (per remote Learner, or for the driver's own Learner when num_learners = 0)."""
    wait_for_nodes_s: float = 600.0
    """On a cluster joined through RAY_ADDRESS (ray submit, ray job submit): how long to wait for the autoscaler
    to add the nodes the actors need before failing with an error. The embedded local Ray never waits."""

    def __post_init__(self) -> None:
        _positive(self, "resources", ("num_envs_per_env_runner", "learner_threads"))
        if self.num_envs_per_env_runner > MAX_ENVS_PER_RUNNER:
            raise ConfigError(
                f"resources.num_envs_per_env_runner={self.num_envs_per_env_runner}; expected at most "
                f"{MAX_ENVS_PER_RUNNER} (every copy lives in the runner's memory; use more runners instead)"
            )
        for name in (
            "num_env_runners",
            "num_learners",
            "num_gpus_per_learner",
            "num_cpus_per_env_runner",
            "num_cpus_per_learner",
            "wait_for_nodes_s",
        ):
            require_at_least(f"resources.{name}", getattr(self, name), 0)
        for name, amount in self.custom_resources_per_env_runner.items():
            if amount <= 0:
                raise ConfigError(f"resources.custom_resources_per_env_runner.{name}={amount}; expected a value > 0")
        if self.custom_resources_per_env_runner and self.num_env_runners == 0:
            raise ConfigError(
                "resources.custom_resources_per_env_runner is set but resources.num_env_runners=0 (sampling in the "
                "driver places no EnvRunner); expected num_env_runners >= 1"
            )

    def demand(self) -> dict[str, float]:
        """What the remote actors of a run reserve in total, per Ray resource (the driver's own use aside)."""
        runners, learners = self.num_env_runners, self.num_learners
        total: dict[str, float] = {
            "CPU": runners * self.num_cpus_per_env_runner + learners * self.num_cpus_per_learner,
            "GPU": max(learners, 1) * self.num_gpus_per_learner,
        }
        for name, amount in self.custom_resources_per_env_runner.items():
            total[name] = runners * amount
        return {name: amount for name, amount in total.items() if amount > 0}


@dataclass(frozen=True)
class FaultsConfig:
    """What a run survives and when it gives up (docs/DESIGN.md, "Faults")."""

    restart_env_runners: bool = True
    """Replace a remote EnvRunner that dies; training goes on with the others meanwhile."""
    max_env_runner_restarts: int = 1000
    env_runner_restart_delay_s: float = 2.0
    """Wait between an EnvRunner's death and its restart (Ray's own default is 60 s)."""
    restart_failed_envs: bool = True
    """An env that raises in reset() or step() is rebuilt and sampling goes on: the episodes in flight on that
    EnvRunner are dropped (RLlib rebuilds its whole vector of envs) and counted as env errors."""
    max_bad_iterations: int = 5
    """Stop with an error after this many iterations in a row that each saw a non-finite observation or skipped
    an update for a non-finite loss (a run that keeps producing them is broken, not unlucky)."""

    def __post_init__(self) -> None:
        _positive(self, "faults", ("max_bad_iterations",))
        for name in ("max_env_runner_restarts", "env_runner_restart_delay_s"):
            require_at_least(f"faults.{name}", getattr(self, name), 0)


@dataclass(frozen=True)
class StopConfig:
    env_steps: int = 1_000_000
    """Train until this many env steps have been sampled."""

    def __post_init__(self) -> None:
        _positive(self, "stop", ("env_steps",))


@dataclass(frozen=True)
class RunConfig:
    output_dir: str = "runs"
    """Runs are written to output_dir/name/."""
    name: str | None = None
    """Run directory name; default: the config file's stem plus a timestamp."""
    seed: int = 0
    checkpoint_every: int = 10
    """Save a checkpoint every this many iterations (and always at the end)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""
    graph_image_every: int = 5
    """Write the communication graph heatmap to TensorBoard every this many iterations."""

    def __post_init__(self) -> None:
        _positive(self, "run", ("checkpoint_every", "keep_checkpoints", "graph_image_every"))
        require_at_least("run.seed", self.seed, 0)
        if self.name is not None:
            check_run_name(self.name)


@dataclass(frozen=True)
class ExperimentConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    stop: StopConfig = field(default_factory=StopConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.training.sample_ahead and self.resources.num_env_runners < 1:
            raise ConfigError(
                "training.sample_ahead=true needs resources.num_env_runners >= 1 (the next batch is sampled in "
                f"another process while the Learner updates); got resources.num_env_runners="
                f"{self.resources.num_env_runners}"
            )


# --------------------------------------------------------------------------------------------------------------
# Strict conversion from plain data (YAML) to the typed tree.


def check_run_name(name: str) -> None:
    """A run name is one path component below run.output_dir: `/abs`, `../x` or `a/b` would write elsewhere, and an
    empty name would make the output directory itself the run."""
    separators = [sep for sep in (os.sep, os.altsep, "/") if sep]
    if not name.strip() or name in (".", "..") or any(sep in name for sep in separators) or "\0" in name:
        raise ConfigError(
            f"run.name={name!r}; expected a single directory name (no '/', not empty, not '.' or '..'): the run is "
            "written to run.output_dir/run.name"
        )


def _positive(obj: object, section: str, names: Sequence[str]) -> None:
    for name in names:
        require_positive(f"{section}.{name}", getattr(obj, name))


def _in_range(obj: object, section: str, name: str, lo: float, hi: float) -> None:
    require_in_range(f"{section}.{name}", getattr(obj, name), lo, hi)


def _env_from_mapping(data: Any, path: str) -> EnvConfig:
    """The env section: its `options` are typed by the options class of the env that `name` selects."""
    if isinstance(data, EnvConfig):
        return data
    data = dict(data or {}) if isinstance(data, Mapping) else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values, got {data!r}")
    options = data.pop("options", None)
    if data.get("factory") is not None and "name" not in data:
        data["name"] = data["factory"]  # the factory's path labels the env in logs and reports
    env = from_mapping(EnvConfig, data, path)
    if is_custom(env.name, env.factory):  # imported and built by the probe before Ray starts (agents/build.py)
        try:
            if env.factory is not None:
                custom.check_factory_path(env.factory)
                if env.name in ENVS:
                    raise custom.CustomEnvError(
                        f"{path}.factory={env.factory!r} is set and {path}.name='{env.name}' names an env of the "
                        "table; expected either a table env (no factory) or a factory with a free label as its name"
                    )
            elif not custom.is_module_path(env.name):
                raise custom.CustomEnvError(
                    f"{path}.name='{env.name}' is not a known env; expected one of: {', '.join(ENVS)}; or the import "
                    "path of a PettingZoo env module (e.g. pettingzoo.sisl.pursuit_v5), or "
                    f"{path}.factory=module:callable"
                )
            plain = custom.check_options(env.name, options)
        except custom.CustomEnvError as err:
            raise ConfigError(str(err)) from err
        return dataclasses.replace(env, options=plain)
    try:  # the env's own strict checks; their messages name env.options.<field>
        typed_options = make_options(env.name, options)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from err
    return dataclasses.replace(env, options=typed_options)


CONVERTERS: dict[type, Converter] = {EnvConfig: _env_from_mapping}


def experiment_from_mapping(data: Any) -> ExperimentConfig:
    """Validates a whole experiment given as plain data (a parsed YAML file)."""
    if isinstance(data, Mapping):
        data = {"env": {}, **data}  # the env section is always converted, so its options are always typed
    config: ExperimentConfig = from_mapping(ExperimentConfig, data, "", CONVERTERS)
    return config


# --------------------------------------------------------------------------------------------------------------
# Files and overrides.


def parse_override(text: str) -> tuple[list[str], Any]:
    """`model.graph.sparsity=0.4` -> (["model", "graph", "sparsity"], 0.4); values are parsed as YAML scalars."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form dotted.key=value (e.g. run.seed=3)")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({err})") from err
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Returns a copy of `data` with each `dotted.key=value` applied; unknown keys are caught by validation."""
    result = _deep_copy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                section = ".".join(keys[: i + 1])
                raise ConfigError(f"override '{text}': '{section}' is a value, not a section")
            node = child
        node[keys[-1]] = value
    return result


def _deep_copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    return data


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader with two YAML 1.1 surprises removed: a key given twice in one mapping is an error
    (PyYAML keeps the last silently, so a second `training:` section drops the first's settings), and `1e-3` /
    `1e6` are numbers, as in YAML 1.2 and every other config language (YAML 1.1 needs a dot: `1.0e-3`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} a second time (first on line {seen[key].line + 1}); expected each key once",
                    key_node.start_mark,
                )
            if isinstance(key, Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parses YAML text as configs and overrides are read everywhere (`_StrictLoader`); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: builds plain data, never objects


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a directory; expected a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file '{path}' is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise ConfigError(f"config file '{path}' cannot be read ({err.strerror or err})") from err
    except RecursionError:
        raise ConfigError(f"config file '{path}' is nested too deeply to be a config") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file '{path}' is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Loads a YAML experiment (or the defaults when `path` is None), applies overrides, validates everything.

    The run name defaults to the config file's stem plus a timestamp, fixed here so that the resolved
    config saved in the run directory names the run it belongs to.
    """
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    config = experiment_from_mapping(data)
    if config.run.name is None:
        stem = Path(path).stem if path is not None else "default"
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        config = dataclasses.replace(config, run=dataclasses.replace(config.run, name=f"{stem}-{stamp}"))
    return config


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
