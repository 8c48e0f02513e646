"""benchmarks/team_scaling.py: each case runs the layout and graph its name says, and the growth fit is a log-log
slope."""

from __future__ import annotations

import argparse
import math

import pytest

from benchmarks import team_scaling

ARGS = argparse.Namespace(k=2, batch=2, embed_dim=8, obs_dim=3, n_actions=4)


@pytest.mark.parametrize(
    ("graph", "k", "layout"), [("sparse", 2, "gathered"), ("sparse-dense", 2, "dense"), ("dense", 47, "dense")]
)
def test_each_case_runs_the_graph_and_layout_it_names(graph: str, k: int, layout: str) -> None:
    case = team_scaling.build_case(48, graph, ARGS)  # gathers(48, 2): 48 >= 16 * 3
    assert (case.k, case.layout) == (k, layout)
    assert set(case.calls) == set(team_scaling.KINDS)
    for call in case.calls.values():
        call()
    forward = team_scaling.build_case(48, graph, ARGS, forward_only=True)
    assert set(forward.calls) == {"act", "attn"}
    forward.calls["attn"]()


def test_growth_exponent_is_the_log_log_slope() -> None:
    ns = [64, 256, 1024]
    assert math.isclose(team_scaling.growth_exponent(ns, [3.0 * n**1.5 for n in ns]), 1.5)
