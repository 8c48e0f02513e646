"""The fence around RLlib's private API (agents/rllib_private.py): what it relies on is still in the installed RLlib,
and nothing else in agents/ reaches past it.

After a Ray upgrade, `test_every_private_name_the_fence_relies_on_is_still_there` is the one test to read first: it
lists, in one failure, every private name that is gone, is no longer what the fence takes it for, or is no longer used
by the RLlib method that made it matter.

The rule for the rest of agents/ (`test_no_module_but_the_fence_uses_an_rllib_private_name`): an *RLlib private name*
is a name with one leading underscore that an RLlib class defines (in its class body, or as `self._x = ...` in its
source), for the RLlib classes agents/ subclasses (every class of their MROs from `ray.`) or handles (`HANDLED`), plus
every name the fence lists. Outside the fence, no module of agents/ may access such a name as an attribute
(`x._name`), define a method of that name (an override of a private method, or a private name of ours that shadows
RLlib's), pass it as a string (`getattr(x, "_name")`) or import anything private from `ray` (`from ray.x import _y`,
`ray._private`). RLModule's `_forward`, `_forward_inference`, `_forward_exploration` and `_forward_train` are the
methods RLlib documents for subclasses to implement (`OverrideToImplementCustomLogic`): defining them in an RLModule
is allowed, calling them is not.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import ray
from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.algorithms.ppo.torch.ppo_torch_learner import PPOTorchLearner
from ray.rllib.connectors.learner.learner_connector_pipeline import LearnerConnectorPipeline
from ray.rllib.core.learner.learner import Learner, TrainingData
from ray.rllib.core.learner.learner_group import LearnerGroup
from ray.rllib.core.rl_module.multi_rl_module import MultiRLModule
from ray.rllib.core.rl_module.rl_module import RLModule, RLModuleSpec
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.env.utils.infinite_lookback_buffer import InfiniteLookbackBuffer
from ray.rllib.utils.metrics import NUM_ENV_STEPS_SAMPLED_LIFETIME
from ray.rllib.utils.metrics.metrics_logger import MetricsLogger

import agents
from agents import rllib_private
from agents.rllib_private import PRIVATE_NAMES, PrivateName

AGENTS = Path(agents.__file__).resolve().parent
FENCE = Path(rllib_private.__file__).resolve()

HANDLED: tuple[type, ...] = (
    EnvRunnerGroup,
    LearnerGroup,
    MetricsLogger,
    MultiRLModule,
    RLModuleSpec,
    SingleAgentEpisode,
    InfiniteLookbackBuffer,
    TrainingData,
    LearnerConnectorPipeline,
)
"""RLlib classes whose instances agents/ reads or calls without subclassing them."""

RLMODULE_HOOKS = frozenset({"_forward", "_forward_inference", "_forward_exploration", "_forward_train"})
"""RLModule's methods for subclasses to implement (RLlib marks them `OverrideToImplementCustomLogic`)."""

NOT_YET_MARKED: frozenset[tuple[str, str, str]] = frozenset()
"""RLlib overrides in modules other engineers are editing now, to be marked there (each must still be unmarked)."""

_ASSIGNED = re.compile(r"self\.(_[A-Za-z]\w*)\s*(?::[^=\n]+)?=(?!=)")


def _agents_modules() -> list[ModuleType]:
    return [importlib.import_module(f"agents.{info.name}") for info in pkgutil.iter_modules([str(AGENTS)])]


def _is_rllib(cls: type) -> bool:
    return cls.__module__.startswith("ray.")


def _rllib_subclasses(module: ModuleType) -> list[type]:
    """The classes `module` defines that derive from an RLlib class."""
    return [
        cls
        for cls in vars(module).values()
        if isinstance(cls, type) and cls.__module__ == module.__name__ and any(map(_is_rllib, cls.__mro__))
    ]


def _private_names_of(cls: type) -> set[str]:
    """The single-underscore names `cls` defines in its body or assigns to `self` in its source."""
    names = {name for name in vars(cls) if name.startswith("_") and not name.startswith("__")}
    with contextlib.suppress(OSError, TypeError):  # no source (a C extension): the class body's names only
        names.update(name for name in _ASSIGNED.findall(inspect.getsource(cls)) if not name.startswith("__"))
    return names


def rllib_private_names() -> dict[str, str]:
    """Every RLlib private name of the rule (module docstring), with an RLlib class that has it."""
    roots = [cls for module in _agents_modules() for cls in _rllib_subclasses(module)] + list(HANDLED)
    owners: dict[str, str] = {}
    for root in roots:
        for cls in filter(_is_rllib, root.__mro__):
            for name in _private_names_of(cls):
                owners.setdefault(name, cls.__qualname__)
    for entry in PRIVATE_NAMES:
        owners.setdefault(entry.name, entry.owner.__qualname__)
    return owners


def private_uses(source: str, names: dict[str, str], classes: dict[str, type] | None = None) -> list[str]:
    """Where `source` uses an RLlib private name (module docstring), one line each. `classes`: the module's classes
    by name, to let an RLModule define RLModule's hooks."""
    classes = classes or {}
    hits = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            hits.append(f"{node.lineno}: `.{node.attr}` ({names[node.attr]}'s)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
            hits.append(f"{node.lineno}: the string {node.value!r} ({names[node.value]}'s)")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ray":
            private = [a.name for a in node.names if a.name.startswith("_")]
            if private or any(part.startswith("_") for part in (node.module or "").split(".")):
                hits.append(f"{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "ray" and any(part.startswith("_") for part in parts):
                    hits.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ClassDef):
            cls = classes.get(node.name)
            hook_ok = isinstance(cls, type) and issubclass(cls, RLModule)
            for item in node.body:
                method = isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in names
                if method and not (hook_ok and item.name in RLMODULE_HOOKS):
                    hits.append(f"{item.lineno}: def {node.name}.{item.name} ({names[item.name]}'s)")
    return sorted(hits, key=lambda hit: int(hit.split(":")[0]))


def _fresh_instances() -> tuple[dict[type, Any], list[str]]:
    """Cheap real RLlib objects to read instance attributes off (a CartPole EnvRunner, an unbuilt Learner, a config);
    what could not be built is reported, and its attributes are then looked up in RLlib's source instead."""
    instances: dict[type, Any] = {}
    problems = []
    config = PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0)
    instances[type(config)] = config
    for cls, build in (
        (SingleAgentEnvRunner, lambda: SingleAgentEnvRunner(config=config)),
        (PPOTorchLearner, lambda: PPOTorchLearner(config=config)),
    ):
        try:
            instances[cls] = build()
        except Exception as error:  # the report names it; the source fallback still runs
            problems.append(f"could not build a {cls.__name__} to check attributes on: {error!r}")
    return instances, problems


def _assigned_in_source(owner: type, name: str) -> bool:
    for cls in filter(_is_rllib, owner.__mro__):
        try:
            if name in _ASSIGNED.findall(inspect.getsource(cls)):
                return True
        except (OSError, TypeError):
            continue
    return False


def _hook_class(name: str) -> type:
    """The fence's class that overrides RLlib's private method `name`."""
    (cls,) = [
        cls
        for cls in vars(rllib_private).values()
        if isinstance(cls, type) and cls.__module__ == rllib_private.__name__ and name in vars(cls)
    ]
    return cls


def _accepts(ours: inspect.Signature, theirs: inspect.Signature) -> list[str]:
    """The parameters of `theirs` (RLlib's method, which RLlib calls) that `ours` (the override) does not accept."""
    mine = ours.parameters
    var_keyword = any(p.kind is p.VAR_KEYWORD for p in mine.values())
    missing = []
    for p in list(theirs.parameters.values())[1:]:
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            if not any(q.kind is p.kind for q in mine.values()):
                missing.append(str(p))
        elif p.name in mine:
            if mine[p.name].kind is not p.kind:
                missing.append(f"{p} (ours: {mine[p.name]})")
        elif not (var_keyword and p.kind is p.KEYWORD_ONLY):
            missing.append(str(p))
    return missing


def moved(entries: tuple[PrivateName, ...], instances: dict[type, Any]) -> list[str]:
    """One line per entry that is no longer what the fence relies on."""
    problems = []
    for entry in entries:
        where = f"{entry.owner.__name__}.{entry.name} ({entry.kind})"
        if entry.kind == "attribute":
            instance = next((obj for cls, obj in instances.items() if issubclass(cls, entry.owner)), None)
            if instance is not None:
                if entry.name not in vars(instance):
                    problems.append(f"{where}: not set on a new {type(instance).__name__}")
            elif not _assigned_in_source(entry.owner, entry.name):
                problems.append(f"{where}: no `self.{entry.name} = ...` in the source of {entry.owner.__name__}")
        else:
            method = inspect.getattr_static(entry.owner, entry.name, None)
            if not inspect.isfunction(method):
                problems.append(f"{where}: gone (or no longer a plain method: {method!r})")
                continue
            signature = inspect.signature(method)
            try:
                signature.bind(None, *[None] * entry.args, **dict.fromkeys(entry.keywords))
            except TypeError as error:
                problems.append(
                    f"{where}: the fence passes {entry.args} positional + {entry.keywords}, "
                    f"RLlib's signature is now {signature} ({error})"
                )
            if entry.kind == "hook":
                missing = _accepts(inspect.signature(vars(_hook_class(entry.name))[entry.name]), signature)
                if missing:
                    problems.append(f"{where}: our override does not accept {missing} of RLlib's {signature}")
        for cls, method_name in entry.used_by:
            user = getattr(cls, method_name, None)
            if user is None:
                problems.append(f"{where}: {cls.__name__}.{method_name}, which uses it, is gone")
            elif not re.search(rf"\.{entry.name}\b", inspect.getsource(user)):
                problems.append(f"{where}: {cls.__name__}.{method_name} no longer uses it")
    return problems


# -- the installed RLlib -----------------------------------------------------------------------------------------


def test_every_private_name_the_fence_relies_on_is_still_there() -> None:
    instances, problems = _fresh_instances()
    problems += moved(PRIVATE_NAMES, instances)
    assert not problems, f"RLlib's private API moved (ray {ray.__version__}; agents/rllib_private.py):\n" + "\n".join(
        f"- {line}" for line in problems
    )


def test_the_check_reports_what_moved() -> None:
    """The check above can fail: a name that is gone, a call RLlib's signature no longer takes, an attribute no longer
    set, a user that no longer uses the name, an override that no longer takes RLlib's arguments."""
    instances, _ = _fresh_instances()
    cases = {
        PrivateName(SingleAgentEnvRunner, "_no_such_method", "method"): "gone",
        PrivateName(SingleAgentEnvRunner, "_try_env_step", "method", args=2): "the fence passes",
        PrivateName(SingleAgentEnvRunner, "_log_env_steps", "method", keywords=("steps",)): "the fence passes",
        PrivateName(SingleAgentEnvRunner, "_no_such_attribute", "attribute"): "not set on a new",
        PrivateName(Learner, "_no_such_attribute", "attribute"): "not set on a new",
        PrivateName(SingleAgentEnvRunner, "_seed", "attribute", used_by=((SingleAgentEnvRunner, "sample"),)): (
            "no longer uses it"
        ),
    }
    for entry, expected in cases.items():
        (line,) = moved((entry,), instances)
        assert expected in line, line
    (line,) = moved((PrivateName(SingleAgentEnvRunner, "_no_such", "attribute"),), {})  # the source fallback
    assert "no `self._no_such = ...`" in line

    def narrow(self: Any, *, num_timesteps: int | None = None) -> None: ...

    assert _accepts(inspect.signature(narrow), inspect.signature(SingleAgentEnvRunner._sample))
    hook = _hook_class("_sample")
    assert not _accepts(inspect.signature(vars(hook)["_sample"]), inspect.signature(SingleAgentEnvRunner._sample))


def test_the_env_runner_functions_do_what_their_names_say() -> None:
    """On a real RLlib EnvRunner (CartPole, 2 envs): the first reset is seeded and clears `needs_env_reset`, RLlib
    sets it again when it recreates the env, a step returns gymnasium's five, the sampled counters count."""
    config = PPOConfig().environment("CartPole-v1").env_runners(num_env_runners=0, num_envs_per_env_runner=2)
    runner = SingleAgentEnvRunner(config=config.debugging(seed=3))
    assert rllib_private.needs_env_reset(runner)
    obs, _ = rllib_private.reset_envs(runner)
    assert obs.shape == (2, 4) and not rllib_private.needs_env_reset(runner)
    twin = SingleAgentEnvRunner(config=config.debugging(seed=3))
    assert (rllib_private.reset_envs(twin)[0] == obs).all()  # seeded with the runner's seed
    results = rllib_private.step_envs(runner, runner.env.action_space.sample())
    assert len(results) == 5 and results[0].shape == (2, 4)
    rllib_private.log_sampled_steps(runner, 7, 1)
    assert runner.metrics.peek(NUM_ENV_STEPS_SAMPLED_LIFETIME) == 7
    runner.make_env()
    assert rllib_private.needs_env_reset(runner)
    assert rllib_private.env_runner_weights_seq_no(runner) == 0
    assert str(rllib_private.env_runner_device(runner)) == "cpu"


def test_custom_connectors_are_seen_where_rllib_keeps_them() -> None:
    assert not rllib_private.has_custom_connectors(PPOConfig())
    assert rllib_private.has_custom_connectors(PPOConfig().env_runners(env_to_module_connector=lambda *a: []))
    assert rllib_private.has_custom_connectors(PPOConfig().env_runners(module_to_env_connector=lambda *a: []))


def test_the_config_function_reaches_rllib() -> None:
    config = PPOConfig()
    rllib_private.sync_env_runner_states_in_training_step(config, True)
    assert config._dont_auto_sync_env_runner_states is True


# -- agents/ ----------------------------------------------------------------------------------------------------


def test_no_module_but_the_fence_uses_an_rllib_private_name() -> None:
    names = rllib_private_names()
    assert {"_needs_initial_reset", "_params", "_value_error"} <= set(names)  # the rule finds RLlib's names
    hits = []
    for module in _agents_modules():
        path = Path(module.__file__ or "").resolve()
        if path == FENCE:
            continue
        classes = {name: obj for name, obj in vars(module).items() if isinstance(obj, type)}
        hits += [f"agents/{path.name}:{hit}" for hit in private_uses(path.read_text(), names, classes)]
    assert not hits, "RLlib private names outside agents/rllib_private.py:\n" + "\n".join(hits)


def test_the_scan_finds_each_kind_of_private_use() -> None:
    """The scan above can fail: an attribute, a string, a private import, a private method override."""
    names = {"_needs_initial_reset": "SingleAgentEnvRunner", "_sample": "SingleAgentEnvRunner", "_forward": "RLModule"}
    source = (
        "from ray.rllib.utils import _private_helper\n"
        "import ray._private.worker\n"
        "from ray._common.deprecation import Deprecated\n"
        "x = runner._needs_initial_reset\n"
        "y = getattr(runner, '_needs_initial_reset')\n"
        "class Runner:\n"
        "    def _sample(self): ...\n"
        "    def _forward(self): ...\n"
        "    def _ours(self): ...\n"
    )
    assert [hit.split(":")[0] for hit in private_uses(source, names)] == ["1", "2", "3", "4", "5", "7", "8"]
    assert [hit.split(":")[0] for hit in private_uses(source, names, {"Runner": MultiRLModule})] == [
        "1",
        "2",
        "3",
        "4",
        "5",
        "7",
    ]  # an RLModule may define RLModule's hooks


def test_the_fence_lists_every_rllib_private_name_it_uses() -> None:
    """So the check of the installed RLlib covers everything the fence touches, and lists nothing it no longer does."""
    names = rllib_private_names()
    tree = ast.parse(FENCE.read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr in names}
    used |= {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name in names}
    listed = {entry.name for entry in PRIVATE_NAMES}
    assert used - listed == set(), "used by the fence but not in PRIVATE_NAMES"
    assert listed - used == set(), "in PRIVATE_NAMES but no longer used by the fence"


def _override_base(decorators: list[ast.expr], module: ModuleType) -> type | None:
    for decorator in decorators:
        if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "override":
            (arg,) = decorator.args
            return eval(compile(ast.Expression(arg), "<override>", "eval"), vars(module))
    return None


def test_every_override_of_an_rllib_method_is_marked() -> None:
    """Each method of ours that overrides a method of an RLlib class is marked `@override(Base)` with Base one of its
    class's bases that has the method: RLlib's decorator then checks at import time that the method still exists."""
    unmarked, wrong, exempt = [], [], set()
    for module in _agents_modules():
        tree = ast.parse(Path(module.__file__ or "").read_text())
        for node in tree.body:
            cls = vars(module).get(node.name) if isinstance(node, ast.ClassDef) else None
            if not isinstance(node, ast.ClassDef) or not isinstance(cls, type):
                continue
            for item in node.body:
                if not isinstance(item, ast.FunctionDef):
                    continue
                rllib_bases = [b for b in cls.__mro__[1:] if _is_rllib(b) and item.name in vars(b)]
                if not rllib_bases:
                    continue
                where = (module.__name__, node.name, item.name)
                base = _override_base(item.decorator_list, module)
                if base is None:
                    if where in NOT_YET_MARKED:
                        exempt.add(where)
                    else:
                        unmarked.append(".".join(where))
                elif not (issubclass(cls, base) and item.name in dir(base)):
                    wrong.append(f"{'.'.join(where)}: @override({base.__name__})")
                elif where in NOT_YET_MARKED:
                    wrong.append(f"{'.'.join(where)} is marked now: take it off NOT_YET_MARKED")
    assert not unmarked, f"overrides of RLlib methods without @override: {unmarked}"
    assert not wrong, "\n".join(wrong)
    assert exempt == NOT_YET_MARKED, f"no longer an unmarked override: {NOT_YET_MARKED - exempt}"
