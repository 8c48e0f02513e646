"""The repository stands alone: no code, config or doc cites a design file that lives outside it (the steering
documents its first sessions were written against). Their content that the code relies on is in docs/DESIGN.md."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("ARCHITECTURE", "REFERENCE.md", "../shared", "shared/design", "shared/anchors")


DIRS = ("agents", "benchmarks", "commformer", "configs", "docker", "docs", "envs", "tests", ".ci")
SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".sh", "")


def _files() -> list[Path]:
    top = [p for p in ROOT.iterdir() if p.is_file()]
    inner = [p for d in DIRS if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*") if p.is_file()]
    return [p for p in top + inner if p.suffix in SUFFIXES and p != Path(__file__).resolve()]


def test_nothing_cites_a_file_outside_the_repository():
    files = _files()
    assert any(p.name == "DESIGN.md" for p in files) and any(p.name == "train.py" for p in files)  # it looked
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            hits += [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for word in OUTSIDE if word in line]
    assert not hits, "\n".join(hits)
