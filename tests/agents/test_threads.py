"""Threads: importing `agents` makes OpenMP wait passively (read once, when torch loads), and Ray workers get
the same; a user's own OMP_WAIT_POLICY wins. The learner's thread count is tested in test_bilevel.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _spincount(code: str, **env: str) -> str:
    """GOMP_SPINCOUNT as libgomp reports it (its busy-wait length: 0 = passive) after running `code`."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, "OMP_DISPLAY_ENV": "VERBOSE", **env},
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    if not lines:
        pytest.skip("torch is not linked against GNU OpenMP here: nothing to check")
    return lines[0].split("=")[1].strip().strip("'")


def test_importing_agents_before_torch_makes_openmp_wait_passively():
    assert _spincount("import torch; torch.ones(2)") == "300000"  # libgomp's default: spin long, then sleep
    assert _spincount("import agents, torch; torch.ones(2)") == "0"  # passive: sleep at once
    assert int(_spincount("import agents, torch; torch.ones(2)", OMP_WAIT_POLICY="ACTIVE")) > 300000


def test_workers_wait_passively_too():
    from agents.build import worker_env_vars

    # This process imported `agents`, so the policy is set (PASSIVE unless the user chose one).
    assert worker_env_vars()["OMP_WAIT_POLICY"] == os.environ["OMP_WAIT_POLICY"]
