"""Shared fixtures of the RLlib-glue tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A local Ray for one test module, shut down afterwards if this fixture started it."""
    import ray

    from agents.train import init_ray

    started = init_ray()
    yield
    if started:
        ray.shutdown()
