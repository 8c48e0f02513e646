"""SMAX scenarios of our own, built from jaxmarl's scenario and unit-stat parameters: battles where allies must talk.

jaxmarl's SMAX maps (3m, 2s3z, ...) give every ally the same sight, so each unit sees what it needs and nothing is
worth saying. The official CommFormer script trains its communication results on SMAC maps where that is not so;
`1o_2r_vs_4r` is the clearest: one overseer (a flyer that sees far and cannot attack) and two roaches that see little
face four reapers, and the roaches have to be told where the enemy is. SMAX has neither overseers nor roaches nor
reapers, so the scenario here is *modelled on* it with SMAX's unit types and jaxmarl's per-type stat arrays, which
its `SMAX` constructor takes (the arrays are indexed by unit type and shared by both teams, so each role gets a type
no other unit uses):

- ``1o_2r_vs_4r``: ally 0 is the scout, a stalker (type 2) with sight 14 and no attack; allies 1-2 are marauders
  (type 1) with sight 3 and attack range 3, so they see only what they can shoot (an attack is available whenever an
  enemy is within attack range, whatever the sight, so a longer range would leak the enemy's presence through the
  action mask); the enemies are 4 zerglings (type 4, jaxmarl's stats), played by jaxmarl's heuristic AI. Start
  positions are drawn per battle (jaxmarl's SMACv2 "surround or reflect" generator), so where the enemies come from
  changes every battle and only the scout can see it from afar.
- ``1o_2r_vs_4r_hold``: the same battle with zerglings of speed 0, which hold their start positions: the plain map
  turned out to need no messages (the heuristic walks the zerglings to the marauders), here they must be found.

Whether a scenario really needs communication is a measured claim, not a design one: see docs/BENCHMARKS.md.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Scenario:
    """A battle: unit types (allies first), team sizes, random start positions, and per-type stat changes."""

    unit_types: tuple[int, ...]
    num_allies: int
    num_enemies: int
    random_positions: bool
    stats: dict[str, dict[int, float]] = field(default_factory=dict)
    """SMAX constructor array (e.g. ``unit_type_sight_ranges``) -> {unit type: value}; the rest keep jaxmarl's."""


MARAUDER, STALKER, ZERGLING = 1, 2, 4

SCENARIOS: dict[str, Scenario] = {
    "1o_2r_vs_4r": Scenario(
        unit_types=(STALKER, MARAUDER, MARAUDER, ZERGLING, ZERGLING, ZERGLING, ZERGLING),
        num_allies=3,
        num_enemies=4,
        random_positions=True,
        stats={
            "unit_type_sight_ranges": {STALKER: 14.0, MARAUDER: 3.0},
            "unit_type_attacks": {STALKER: 0.0},
            "unit_type_attack_ranges": {MARAUDER: 3.0},
        },
    ),
}
# The same battle with zerglings that cannot move (velocity 0): jaxmarl's heuristic AI walks units that see no enemy
# through the map's centre, which brings the zerglings to the marauders, so on 1o_2r_vs_4r the marauders never need
# to be told where the enemy is (measured: docs/BENCHMARKS.md). Here they must find the enemy, which only the scout
# sees from afar; a zergling still bites what comes within its range of 2, a marauder shoots from 3.
SCENARIOS["1o_2r_vs_4r_hold"] = replace(
    SCENARIOS["1o_2r_vs_4r"], stats={**SCENARIOS["1o_2r_vs_4r"].stats, "unit_type_velocities": {ZERGLING: 0.0}}
)


def jaxmarl_kwargs(name: str, smax: Any) -> dict[str, Any]:
    """The `scenario` and stat-array keyword arguments of jaxmarl's SMAX constructor for scenario `name`.

    Args:
        smax: jaxmarl's `environments.smax` module (for its `Scenario` class and the `SMAX` defaults).
    """
    import jax.numpy as jnp

    spec = SCENARIOS[name]
    if len(spec.unit_types) != spec.num_allies + spec.num_enemies:
        raise ValueError(
            f"scenario {name!r} lists {len(spec.unit_types)} unit types for {spec.num_allies} + "
            f"{spec.num_enemies} units; expected one per unit"
        )
    scenario = smax.Scenario(
        jnp.asarray(spec.unit_types, dtype=jnp.uint8), spec.num_allies, spec.num_enemies, spec.random_positions, False
    )
    defaults = inspect.signature(smax.SMAX.__init__).parameters
    kwargs: dict[str, Any] = {"scenario": scenario}
    for array, values in spec.stats.items():
        stats = jnp.asarray(defaults[array].default, dtype=jnp.float32)
        for unit_type, value in values.items():
            stats = stats.at[unit_type].set(value)
        kwargs[array] = stats
    return kwargs
