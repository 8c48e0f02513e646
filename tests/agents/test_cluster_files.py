"""Static checks of what cannot run here: the cluster files (Ray's own validation) and the Dockerfiles."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = ("docker/cluster.yaml", "docker/cluster-onprem.yaml")
DOCKERFILES = ("docker/Dockerfile.cpu", "docker/Dockerfile.cuda")
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER", "CMD", "ENTRYPOINT", "LABEL", "EXPOSE"}


@pytest.mark.parametrize("path", CLUSTERS)
def test_ray_accepts_the_cluster_file(path: str) -> None:
    """What `ray up` does before it contacts any provider: fill Ray's defaults, then validate against its schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / path).read_text()))
    validate_config(config)
    assert config["docker"]["image"].startswith("commformer:")


def test_cloud_cluster_has_gpu_learners_and_rollout_nodes() -> None:
    types = yaml.safe_load((ROOT / "docker/cluster.yaml").read_text())["available_node_types"]
    gpu = [t for t in types.values() if t["resources"].get("GPU")]
    rollout = [t for t in types.values() if t["resources"].get("rollout")]
    assert gpu and all(t["docker"]["worker_image"] == "commformer:cuda" for t in gpu)
    assert rollout and all("docker" not in t for t in rollout)  # the CPU image of the top-level docker section


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            logical.append(current.strip())
            current = ""
    assert not current, f"{path}: a continuation line ends the file"
    return [(text.split(None, 1)[0], text.split(None, 1)[1]) for text in logical]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.mark.parametrize("path", DOCKERFILES)
def test_dockerfile_static_check(path: str) -> None:
    steps = _instructions(ROOT / path)
    names = [name for name, _ in steps]
    assert set(names) <= INSTRUCTIONS, set(names) - INSTRUCTIONS
    assert names[0] == "FROM"
    base = steps[0][1]
    assert re.fullmatch(r"[\w./-]+:[\w.-]+", base) and not base.endswith(":latest"), f"unpinned base image {base}"
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    for name, args in steps:
        if name == "COPY":
            *sources, _ = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"{path}: COPY {source} does not exist"
                assert source not in ignored, f"{path}: COPY {source} is excluded by .dockerignore"
        if name == "RUN" and "pip install" in args:
            assert "-c constraints.txt" in args, f"{path}: a pip install without the tested pins: {args}"
            for match in re.finditer(r'"?([A-Za-z0-9_.-]+)==([^"\s]+)"?', args):
                assert _pins()[match[1].lower()] == match[2], f"{path}: {match[0]} differs from constraints.txt"
    users = [args for name, args in steps if name == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{path}: the image should not run as root"
    assert names[-1] == "CMD"


def test_submit_entry_finds_configs_from_anywhere(tmp_path, monkeypatch) -> None:
    """`ray submit` runs agents/submit.py from the home directory: a relative CONFIG is looked up in the project."""
    from agents.submit import _resolve

    monkeypatch.chdir(tmp_path)
    args = _resolve(["--", "configs/signal.yaml", "run.seed=3", "--resume", "x"])
    assert args == [str(ROOT / "configs/signal.yaml"), "run.seed=3", "--resume", "x"]
    assert _resolve(["run.seed=3"]) == ["run.seed=3"]  # no CONFIG: the default config applies
    assert _resolve(["nonexistent.yaml"]) == ["nonexistent.yaml"]  # left for `train` to refuse by name
