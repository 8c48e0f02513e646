"""Fixtures shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

FLOAT64_SUITES = ("layers", "model")
"""Model tests run in float64 so that fast and naive implementations can be compared tightly."""


@pytest.fixture(autouse=True)
def float64_default(request: pytest.FixtureRequest) -> Iterator[None]:
    """In tests/layers and tests/model: float64 as the default dtype for one test, the previous one restored after."""
    if request.path.parent.name not in FLOAT64_SUITES:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(autouse=True, scope="session")
def checkpoint_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Checkpoints written by the tests are signed with a key of their own, not the user's
    (~/.config/commformer/checkpoint.key; agents/checkpoints.py); subprocesses inherit it through the environment."""
    import os

    from agents.checkpoints import KEY_ENV

    previous = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = str(tmp_path_factory.mktemp("key") / "checkpoint.key")
    yield
    if previous is None:
        del os.environ[KEY_ENV]
    else:
        os.environ[KEY_ENV] = previous
