"""The layering rule: `commformer/` is a pure PyTorch library and `envs/` knows no model code; neither imports ray.
Below the model, the config modules import no model code at all.

Checked in a fresh interpreter (this test process has long since imported ray through other tests): every module
of the package is imported, then `sys.modules` is read. Imports that only run for a type checker are read from the
source.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({{"modules": names, "loaded": sorted(sys.modules)}}))
"""


_MODULE_PROBE = """
import importlib, json, sys
importlib.import_module({module!r})
print(json.dumps(sorted(sys.modules)))
"""

CONFIG_MODULES = ("commformer.config", "commformer.typed", "agents.config")
"""What reads, checks and writes configs (YAML, CLI, the exported policy's JSON)."""
CONFIG_ONLY = {"commformer", "commformer.config", "commformer.typed", "commformer.validate"}
"""The commformer modules a config module may import: no nn.Module is defined in them."""


def _run(probe: str) -> object:
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _imported_by(package: str) -> tuple[list[str], set[str]]:
    """(the package's modules, every module loaded after importing all of them) in a fresh interpreter."""
    result = _run(_PROBE.format(package=package))
    assert isinstance(result, dict)
    return result["modules"], set(result["loaded"])


def _loaded_by(module: str) -> set[str]:
    """Every module loaded after importing `module` alone, in a fresh interpreter."""
    loaded = _run(_MODULE_PROBE.format(module=module))
    assert isinstance(loaded, list)
    return set(loaded)


def _source(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _direct_imports(module: str) -> set[str]:
    """The commformer modules that `module`'s source imports, `if TYPE_CHECKING:` blocks included."""
    found = set()
    for node in ast.walk(ast.parse(_source(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] == "commformer"}


def _commformer_imports(module: str) -> set[str]:
    """The commformer modules that `module`'s source imports, transitively, `if TYPE_CHECKING:` blocks included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += _direct_imports(name)
    return seen


def _top_level(loaded: set[str]) -> set[str]:
    return {name.split(".")[0] for name in loaded}


ENVS_MAY_USE = {"commformer", "commformer.validate"}
"""envs/ knows no model code: of commformer it uses only the config checks and their error type (stdlib only)."""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("commformer", {"ray", "agents", "envs"}), ("envs", {"ray", "torch", "agents"})],
)
def test_a_package_imports_none_of_the_layers_above_it(package: str, forbidden: set[str]) -> None:
    modules, loaded = _imported_by(package)
    assert len(modules) >= 5, (
        modules
    )  # the walk found the package's modules (a probe that imports nothing proves nothing)
    assert _top_level(loaded) & forbidden == set()
    if package == "envs":
        assert {name for name in loaded if name.split(".")[0] == "commformer"} <= ENVS_MAY_USE


def test_the_probe_sees_ray_when_it_is_imported() -> None:
    """Control: the same probe on `agents` (the RLlib glue) does report ray."""
    _, loaded = _imported_by("agents")
    assert "ray" in _top_level(loaded)


@pytest.mark.parametrize("module", CONFIG_MODULES)
def test_config_modules_import_no_model_modules(module: str) -> None:
    """Reading a config builds nothing (not even torch is loaded), and no model module can form an import circle
    through a config: not at run time, and not through imports made only for a type checker."""
    loaded = _loaded_by(module)
    assert {name for name in loaded if name.split(".")[0] == "commformer"} <= CONFIG_ONLY
    assert "torch" not in _top_level(loaded)
    assert _commformer_imports(module) - {module} <= CONFIG_ONLY


def test_the_config_probes_see_model_modules_when_they_are_imported() -> None:
    """Control: the same probes on the policy report the model modules and torch."""
    assert {"commformer.graph", "torch"} <= _loaded_by("commformer.policy")
    assert "commformer.graph" in _commformer_imports("commformer.policy")


def test_no_commformer_module_imports_itself_back() -> None:
    """No import circle inside the library, `if TYPE_CHECKING:` imports included (config -> early_exit -> policy ->
    config was one): every module sees only modules below it."""
    modules = [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted((ROOT / "commformer").rglob("*.py"))
    ]
    assert len(modules) >= 15, modules
    for module in modules:
        below = set().union(*(_commformer_imports(name) for name in _direct_imports(module)))
        assert module not in below, f"{module} imports itself back"
