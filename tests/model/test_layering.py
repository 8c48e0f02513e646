"""The layering rule: `commformer/` is a pure PyTorch library and `envs/` knows no model code; neither imports ray.

Checked in a fresh interpreter (this test process has long since imported ray through other tests): every module
of the package is imported, then `sys.modules` is read.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
names = [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
for name in names:
    importlib.import_module(name)
print(json.dumps({{"modules": names, "loaded": sorted(sys.modules)}}))
"""


def _imported_by(package: str) -> tuple[list[str], set[str]]:
    """(the package's modules, every module loaded after importing all of them) in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(package=package)], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["modules"], set(result["loaded"])


def _top_level(loaded: set[str]) -> set[str]:
    return {name.split(".")[0] for name in loaded}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("commformer", {"ray", "agents", "envs"}), ("envs", {"ray", "torch", "agents", "commformer"})],
)
def test_a_package_imports_none_of_the_layers_above_it(package: str, forbidden: set[str]) -> None:
    modules, loaded = _imported_by(package)
    assert len(modules) >= 5, (
        modules
    )  # the walk found the package's modules (a probe that imports nothing proves nothing)
    assert _top_level(loaded) & forbidden == set()


def test_the_probe_sees_ray_when_it_is_imported() -> None:
    """Control: the same probe on `agents` (the RLlib glue) does report ray."""
    _, loaded = _imported_by("agents")
    assert "ray" in _top_level(loaded)
