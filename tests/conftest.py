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
