"""benchmarks/graph_probes.py: the two steps it times differ only in the probes, and a dense layout is refused."""

from __future__ import annotations

import argparse

import pytest
import torch

from benchmarks import graph_probes

ARGS = argparse.Namespace(k=1, probes=3, batch=2, repeats=1, obs_dim=4, n_actions=3)


def test_the_upper_level_step_draws_probes_and_the_lower_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from commformer.graph import CommGraph

    drawn: list[bool] = []
    real = CommGraph.senders

    def recording(self: CommGraph, gumbel: bool = False, generator=None, probes: bool = True):
        senders = real(self, gumbel=gumbel, generator=generator, probes=probes)
        if torch.is_grad_enabled():
            drawn.append(senders.probes is not None)
        return senders

    monkeypatch.setattr(CommGraph, "senders", recording)
    lower, upper = graph_probes.step_times(32, ARGS)  # gathers(32, 1)
    assert lower > 0 and upper > 0
    assert sorted(set(drawn)) == [False, True] and drawn.count(True) == drawn.count(False)


def test_a_graph_in_the_dense_layout_is_refused() -> None:
    with pytest.raises(SystemExit, match="dense layout"):
        graph_probes.step_times(8, ARGS)
