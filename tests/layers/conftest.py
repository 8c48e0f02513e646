"""Model tests run in float64 so that fast and naive implementations can be compared tightly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def float64_default() -> Iterator[None]:
    """Make float64 the default dtype for one test, then restore the previous default for other suites."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
