"""Any PettingZoo environment by import path: `env.name=pkg.module` or `env.factory=pkg.module:callable`.

The env table (`envs/registry.py`) holds the environments adapted here, each with a typed options dataclass. Every
other PettingZoo env can be trained on without writing an adapter:

- `env.name=pettingzoo.sisl.pursuit_v5`: a module as PettingZoo ships its envs, exposing `parallel_env(**kwargs)`
  (taken first) or `env(**kwargs)` (an AEC env, converted with PettingZoo's own `aec_to_parallel`).
- `env.factory=mypkg.envs:make_env`: any callable that returns a ParallelEnv or a (parallelizable) AECEnv;
  `env.name` is then a free label for logs and reports (the factory's path when left out).

`env.options` are the keyword arguments of that call. Such envs have no options dataclass, so the options are
checked for what a keyword argument can be (`check_options`): a mapping whose keys are Python identifiers and whose
values are plain data (None, booleans, numbers, strings, and lists and mappings of these; floats finite), because
they are written to `config.yaml`, sent to every EnvRunner as RLlib's env_config and stored in exported policies.
`render_mode` is not an option: commformer sets it (`rollout --render`). Whether a key means anything is the env's
to say: an unknown keyword makes the factory raise, and `build_raw_env` reports that with the env's name.

Before Ray starts, `probe` builds the env once and runs PettingZoo's own API checks on a fresh copy for a bounded
number of cycles (`API_TEST_CYCLES`): `parallel_api_test` on the ParallelEnv (and `api_test` first on an AEC env),
and refuses spaces the team adapter cannot take (anything but Discrete or float Box actions, or a team mixing the
two). Every error is a `CustomEnvError` that starts with the env's name.

Where the module must be importable (the rule README.md states): every process that builds the env imports it by
name, the driver before Ray starts and each EnvRunner. A module installed in the environment, or on PYTHONPATH, is
found everywhere. A module below the directory `commformer` runs in is found too: `import_object` appends the
current directory to the driver's `sys.path` (the console script would not have it), and Ray puts the driver's
current directory on every local worker's `sys.path`. On a cluster the module must be installed on every node (the
image) or shipped with `ray job submit --working-dir`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from gymnasium import spaces

API_TEST_CYCLES = 25
"""Cycles (steps of every agent) of each PettingZoo API test run by `probe`: enough to step through resets, masks and
dying agents of short episodes; bounded so that a slow env cannot hold up the start (pursuit_v5: ~0.6 s)."""

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
MODULE_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})+$")
"""An env module's import path: at least two dotted parts, so that a mistyped table name (`mpe_sprd`) is not taken
for a module."""
FACTORY_PATH = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*$")
"""`module.path:callable` (the callable may be an attribute path, `module:Class.create`)."""

PLAIN_OPTION = "None, true/false, a number, a string, or a list or mapping of these"


class CustomEnvError(ValueError):
    """An env given by import path cannot be imported, built or used; the message names it and what was expected."""


def is_module_path(name: str) -> bool:
    """Whether `name` has the form of an env module's import path (`a.b`, `pettingzoo.sisl.pursuit_v5`)."""
    return bool(MODULE_PATH.match(name))


def check_factory_path(factory: str) -> None:
    """Raises CustomEnvError unless `factory` reads `module.path:callable`."""
    if not FACTORY_PATH.match(factory):
        raise CustomEnvError(
            f"env.factory={factory!r} is not of the form module.path:callable (e.g. mypkg.envs:make_env); expected "
            "the import path of a module, a colon, and the name of a callable in it"
        )


def check_options(label: str, options: Any) -> dict[str, Any]:
    """The options of a custom env as keyword arguments: a mapping (None: none) of identifiers to plain values.

    Raises:
        CustomEnvError: naming the env and the first key or value that cannot be a keyword argument here.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise CustomEnvError(
            f"env '{label}': env.options={options!r:.80} is not a mapping; expected keyword arguments of the env's "
            "factory, e.g. {n_evaders: 10}"
        )
    checked: dict[str, Any] = {}
    for key, value in options.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise CustomEnvError(
                f"env '{label}': option key {key!r} is not a Python identifier; expected keyword argument names"
            )
        if key == "render_mode":
            raise CustomEnvError(
                f"env '{label}': env.options.render_mode is set by commformer (None while training, rgb_array for "
                "rollout/evaluate --render); expected it left out"
            )
        _check_plain(label, f"env.options.{key}", value)
        checked[key] = value
    return checked


def _check_plain(label: str, path: str, value: Any, depth: int = 0) -> None:
    if depth > 16:
        raise CustomEnvError(f"env '{label}': {path} is nested more than 16 levels deep; expected plain options")
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CustomEnvError(f"env '{label}': {path}={value!r}; expected a finite number")
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_plain(label, f"{path}[{i}]", item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CustomEnvError(f"env '{label}': {path} has key {key!r}; expected string keys")
            _check_plain(label, f"{path}.{key}", item, depth + 1)
        return
    raise CustomEnvError(f"env '{label}': {path}={value!r:.80} of type {type(value).__name__}; expected {PLAIN_OPTION}")


def import_object(label: str, module_name: str, attribute: str | None = None) -> Any:
    """Imports `module_name` (and reads the dotted `attribute` of it), as every process that builds the env does.

    The current directory is appended to `sys.path` first (after everything else, so installed packages win): Ray
    gives its local workers the driver's current directory, and the driver should find what they find.

    Raises:
        CustomEnvError: the module cannot be found or raised while importing, or has no such attribute.
    """
    cwd = os.path.abspath(os.curdir)
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    where = "installed, on PYTHONPATH, or below the directory commformer runs in"
    try:
        with warnings.catch_warnings():  # PettingZoo's env modules warn about their own creation API on import
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise CustomEnvError(
            f"env '{label}': module '{module_name}' cannot be imported ({err}); expected an importable module ({where})"
        ) from err
    except Exception as err:  # the module's own code failed: a missing dependency, a bug
        raise CustomEnvError(
            f"env '{label}': importing module '{module_name}' raised {type(err).__name__}: {err}"
        ) from err
    if attribute is None:
        return module
    node: Any = module
    for part in attribute.split("."):
        if not hasattr(node, part):
            raise CustomEnvError(
                f"env '{label}': module '{module_name}' has no attribute '{attribute}'; expected a callable that "
                "builds a PettingZoo env"
            )
        node = getattr(node, part)
    if not callable(node):
        raise CustomEnvError(
            f"env '{label}': '{module_name}:{attribute}' is a {type(node).__name__}, not callable; expected a "
            "callable that builds a PettingZoo env"
        )
    return node


def resolve_factory(label: str, factory: str | None) -> tuple[Callable[..., Any], str]:
    """The callable that builds the env, and how errors name it (`module.parallel_env`, `module:callable`).

    With `factory` None, `label` is an env module's import path: its `parallel_env`, or else its `env`.
    """
    if factory is not None:
        check_factory_path(factory)
        module_name, _, attribute = factory.partition(":")
        return import_object(label, module_name, attribute), factory
    if not is_module_path(label):
        raise CustomEnvError(
            f"env '{label}' is neither in the env table nor the import path of a module (a.b.c); expected a name "
            "from `commformer envs`, a PettingZoo env module such as pettingzoo.sisl.pursuit_v5, or "
            "env.factory=module:callable"
        )
    module = import_object(label, label)
    for name in ("parallel_env", "env"):
        candidate = getattr(module, name, None)
        if callable(candidate):
            return candidate, f"{label}.{name}"
    raise CustomEnvError(
        f"env '{label}': module '{label}' has neither parallel_env nor env; expected a PettingZoo env module (as "
        "pettingzoo.sisl.pursuit_v5 is) or env.factory=module:callable"
    )


def _is_parallel(env: Any) -> bool:
    from pettingzoo import ParallelEnv

    if isinstance(env, ParallelEnv):
        return True
    return all(hasattr(env, attr) for attr in ("possible_agents", "step", "reset", "observation_space")) and not (
        hasattr(env, "agent_iter")
    )


def _is_aec(env: Any) -> bool:
    from pettingzoo import AECEnv

    return isinstance(env, AECEnv) or hasattr(env, "agent_iter")


def _call(label: str, make: Callable[..., Any], described: str, kwargs: dict[str, Any]) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return make(**kwargs)
    except Exception as err:  # whatever the user's factory raises, said with the env's name
        shown = {k: v for k, v in kwargs.items() if k != "render_mode"}
        raise CustomEnvError(
            f"env '{label}': {described}(**{shown}) raised {type(err).__name__}: {err}; expected the factory to "
            "build a PettingZoo env from env.options (its keyword arguments)"
        ) from err


def build_raw_env(
    label: str, factory: str | None, options: Mapping[str, Any] | None, render_mode: str | None = None
) -> tuple[Any, Any | None]:
    """Builds the env: `(parallel_env, aec_env)`, the second the AEC env it was converted from (None if it was a
    ParallelEnv to begin with).

    Raises:
        CustomEnvError: bad options, an import or a factory that fails, something that is not a PettingZoo env, or
            an AEC env whose agents take turns (PettingZoo converts only envs that declare `is_parallelizable`).
    """
    kwargs = check_options(label, options)
    make, described = resolve_factory(label, factory)
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    built = _call(label, make, described, kwargs)
    if _is_aec(built):
        from pettingzoo.utils.conversions import aec_to_parallel

        if not (getattr(built, "metadata", None) or {}).get("is_parallelizable", False):
            _close(built)
            raise CustomEnvError(
                f"env '{label}': {described} built an AEC env whose metadata does not declare is_parallelizable (its "
                "agents take turns); expected a ParallelEnv, or an AEC env that PettingZoo's aec_to_parallel can "
                "convert (all agents act once per cycle)"
            )
        return aec_to_parallel(built), built
    if _is_parallel(built):
        return built, None
    _close(built)
    raise CustomEnvError(
        f"env '{label}': {described} returned {type(built).__name__}; expected a PettingZoo ParallelEnv or AECEnv"
    )


def _close(env: Any) -> None:
    with contextlib.suppress(Exception):
        env.close()


def check_spaces(label: str, env: Any) -> None:
    """Refuses action spaces the team adapter cannot take, naming the agent: anything but Discrete actions or
    continuous actions in a float Box, and a team that mixes the two kinds."""
    kinds: dict[str, list[str]] = {"continuous": [], "discrete": []}
    for agent in env.possible_agents:
        space = env.action_space(agent)
        if isinstance(space, spaces.Box) and np.issubdtype(space.dtype, np.floating):
            kinds["continuous"].append(agent)
        elif isinstance(space, spaces.Discrete):
            kinds["discrete"].append(agent)
        else:
            raise CustomEnvError(
                f"env '{label}': agent {agent!r} has action space {space}; expected Discrete actions (one choice per "
                "agent and step) or continuous actions in a float Box"
            )
    if kinds["continuous"] and kinds["discrete"]:
        raise CustomEnvError(
            f"env '{label}': agents {kinds['continuous']} have continuous (Box) actions and agents "
            f"{kinds['discrete']} discrete ones; expected one kind for the whole team (many envs have an option for "
            "it, e.g. continuous_actions)"
        )


def api_test(label: str, factory: str | None, options: Mapping[str, Any] | None) -> None:
    """PettingZoo's own API checks on a fresh copy of the env, `API_TEST_CYCLES` cycles each: `api_test` on an AEC
    env, then `parallel_api_test` on the ParallelEnv (for an AEC env, on a fresh conversion). Their console lines
    and warnings are swallowed; a failed check becomes a CustomEnvError."""
    from pettingzoo.test import api_test as aec_api_test
    from pettingzoo.test import parallel_api_test

    parallel, aec = build_raw_env(label, factory, options)
    try:
        if aec is not None:
            _run_check(label, "api_test", lambda: aec_api_test(aec, num_cycles=API_TEST_CYCLES))
            _close(parallel)
            parallel, aec = build_raw_env(label, factory, options)
        _run_check(label, "parallel_api_test", lambda: parallel_api_test(parallel, num_cycles=API_TEST_CYCLES))
    finally:
        _close(parallel)


def _run_check(label: str, name: str, check: Callable[[], None]) -> None:
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check()
    except CustomEnvError:
        raise
    except Exception as err:  # an AssertionError of the checker, or the env failing under it
        what = str(err) or "an assertion without a message"
        raise CustomEnvError(
            f"env '{label}' fails PettingZoo's {name} (within {API_TEST_CYCLES} cycles of random actions): "
            f"{type(err).__name__}: {what}; expected an env that follows the PettingZoo API"
        ) from err


def probe(label: str, factory: str | None, options: Mapping[str, Any] | None) -> None:
    """Everything checked before Ray starts: the import, the build, the action spaces and the API tests."""
    parallel, _ = build_raw_env(label, factory, options)
    try:
        check_spaces(label, parallel)
    finally:
        _close(parallel)
    api_test(label, factory, options)
