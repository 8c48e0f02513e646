"""The one table of environment names, and `make_team_env`.

Adding an environment means adding one row to `ENVS` (no registration on import, no decorators): a frozen
options dataclass, a factory `make(options, render_mode) -> PettingZoo ParallelEnv`, and a one-line
description. Everything the trainer sees is built by `make_team_env`, which checks the name and the options
(unknown keys, wrong types, out-of-range values) before building anything.

Every other PettingZoo env is reached by import path (`envs/custom.py`): `make_team_env` takes a name that is
not in the table as an env module's import path, or, with `factory`, as a free label of the env that
`factory` ("module:callable") builds; its options are that call's keyword arguments.

A natively vectorised env (SMAX: B battles in one jitted step) also gives `make_vector`, a factory of a
gymnasium `VectorEnv` of B team envs with the same single-env spaces as `make_team_env`'s. Training builds that
one (`make_team_vector_env`; agents/build.py hands it to RLlib as a vector entry point); rollout, evaluate and
the space probe keep using the single team env.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium

from envs import custom, magent, mpe, smacv2, smax
from envs import predator_prey as pp
from envs import traffic_junction as tj
from envs.memory import MemoryEnv, MemoryOptions
from envs.options import options_from_mapping
from envs.signal import SignalEnv, SignalOptions
from envs.team import TeamEnv


@dataclass(frozen=True)
class EnvEntry:
    """One row of the env table."""

    options_cls: type
    """Frozen dataclass of the env's options; validates itself in `__post_init__`."""
    make: Callable[[Any, str | None], Any]
    """`make(options, render_mode)` -> the raw PettingZoo ParallelEnv."""
    description: str
    unavailable: Callable[[], str | None] = lambda: None
    """Why the env cannot be built on this machine (a missing optional package or binary, with how to install
    it), or None. Generic checks over the whole table skip such rows with this reason."""
    make_vector: Callable[[Any, int, str, bool, int], gymnasium.vector.VectorEnv] | None = None
    """Natively vectorised envs only: `make_vector(options, num_envs, team_reward, use_state, history)` -> a
    VectorEnv of `num_envs` team envs (NEXT_STEP auto-reset) whose single spaces are `make_team_env`'s."""


def _make_signal(options: SignalOptions, render_mode: str | None = None) -> SignalEnv:
    return SignalEnv(options, render_mode=render_mode)


def _make_memory(options: MemoryOptions, render_mode: str | None = None) -> MemoryEnv:
    return MemoryEnv(options, render_mode=render_mode)


ENVS: dict[str, EnvEntry] = {
    "mpe_spread": EnvEntry(
        mpe.SpreadOptions,
        mpe.simple_spread,
        "mpe2 simple_spread_v3: N agents cover N landmarks and avoid collisions",
    ),
    "mpe_reference": EnvEntry(
        mpe.ReferenceOptions,
        mpe.simple_reference,
        "mpe2 simple_reference_v3: 2 agents each tell the other which landmark to reach",
    ),
    "mpe_speaker_listener": EnvEntry(
        mpe.SpeakerListenerOptions,
        mpe.simple_speaker_listener,
        "mpe2 simple_speaker_listener_v4: a speaker guides a listener (heterogeneous team)",
    ),
    "signal": EnvEntry(
        SignalOptions,
        _make_signal,
        "each agent must name its neighbour's private symbol; solvable only by communicating",
    ),
    "memory": EnvEntry(
        MemoryOptions,
        _make_memory,
        "each agent must repeat a private cue seen `delay` steps earlier; solvable only with a long enough history",
    ),
    "predator_prey": EnvEntry(
        pp.PredatorPreyOptions,
        pp.predator_prey_env,
        "IC3Net's predator-prey: 3 predators find a still prey on a 5x5 grid (vision 1); numpy, vectorised",
        make_vector=pp.predator_prey_vector_env,
    ),
    "predator_prey_10x10": EnvEntry(
        pp.PredatorPreyMediumOptions,
        pp.predator_prey_env,
        "predator-prey, 5 predators on 10x10, vision 1, 40 steps (IC3Net / MAGIC medium); numpy, vectorised",
        make_vector=pp.predator_prey_vector_env,
    ),
    "predator_prey_20x20": EnvEntry(
        pp.PredatorPreyHardOptions,
        pp.predator_prey_env,
        "predator-prey, 10 predators on 20x20, vision 1, 80 steps (IC3Net / MAGIC hard); numpy, vectorised",
        make_vector=pp.predator_prey_vector_env,
    ),
    "predator_capture_prey": EnvEntry(
        pp.PredatorCapturePreyOptions,
        pp.predator_capture_prey_env,
        "MAGIC's predator-capture-prey: predators that see, blind capture agents that capture; numpy, vectorised",
        make_vector=pp.predator_capture_prey_vector_env,
    ),
    "traffic_junction": EnvEntry(
        tj.TrafficJunctionOptions,
        tj.traffic_junction_env,
        "IC3Net's traffic junction (easy / medium / hard): cars choose gas or brake to cross without colliding; numpy, "
        "vectorised",
        make_vector=tj.traffic_junction_vector_env,
    ),
    "magent_battle": EnvEntry(
        magent.BattleOptions,
        magent.magent_battle,
        "magent2 battle: n_agents per side on a grid, the team against a fixed random or scripted opponent",
    ),
    "smacv2": EnvEntry(
        smacv2.SMACv2Options,
        smacv2.smacv2_env,
        "SMACv2 (StarCraft II, needs smacv2 and SC2PATH): n_units allies against n_enemies of the built-in AI",
        smacv2.unavailable_reason,
    ),
    **{
        f"smax_{scenario}": EnvEntry(
            smax.SMAXOptions,
            functools.partial(smax.smax_env, scenario),
            f"SMAX {scenario} (jaxmarl, JAX on CPU): the allies against jaxmarl's heuristic enemies; vectorised",
            smax.unavailable_reason,
            functools.partial(smax.smax_vector_env, scenario),
        )
        for scenario in smax.TABLE_SCENARIOS
    },
}


def is_custom(name: str, factory: str | None = None) -> bool:
    """Whether the env is one reached by import path (`envs/custom.py`) rather than a row of the table."""
    return factory is not None or name not in ENVS


def env_entry(name: str) -> EnvEntry:
    """The row of `ENVS` named `name`.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    entry = ENVS.get(name)
    if entry is None:
        raise ValueError(f"unknown env {name!r}; expected one of: {', '.join(ENVS)}")
    return entry


def make_options(name: str, options: Mapping[str, Any] | Any | None = None) -> Any:
    """The validated options dataclass of env `name`, from a mapping, an instance, or None (defaults).

    Cheap (builds no env), so the config layer can call it to fail before Ray starts.

    Raises:
        ValueError: an unknown env name, an unknown option key (listing the valid keys), a value out of range.
        TypeError: a value of the wrong type (naming the key and the expected type), another env's options.
    """
    entry = env_entry(name)
    if options is None:
        return entry.options_cls()
    if isinstance(options, entry.options_cls):
        return options
    if isinstance(options, Mapping):
        return options_from_mapping(entry.options_cls, options, env_name=name)
    kind = type(options).__name__ if dataclasses.is_dataclass(options) else repr(options)
    raise TypeError(f"options of env {name!r} must be a mapping or {entry.options_cls.__name__}, got {kind}")


def make_team_env(
    name: str,
    options: Mapping[str, Any] | Any | None = None,
    *,
    team_reward: str = "mean",
    use_state: bool = False,
    history: int = 0,
    render_mode: str | None = None,
    factory: str | None = None,
) -> TeamEnv:
    """Build the env `name` and wrap it as a `TeamEnv`.

    Args:
        name: a key of `ENVS`; otherwise the import path of a PettingZoo env module, or with `factory` a label.
        options: the env's options dataclass, a mapping of its fields (checked strictly), or None (defaults); for
            an env by import path, the keyword arguments of its factory (`envs.custom.check_options`).
        team_reward: "mean" or "sum" of the agents' rewards (see `TeamEnv`).
        use_state: add the raw env's global state as `obs["state"]`.
        history: L > 0 adds the last L team observations as `obs["history"]` (L, N, D); 0 adds none.
        render_mode: None, or a mode the raw env supports ("rgb_array" for all envs here).
        factory: "module:callable" that builds the env (an env outside the table), or None.

    Raises:
        ValueError / TypeError: as `make_options` and `TeamEnv`; nothing is built if the name or options fail.
            For an env by import path, `envs.custom.CustomEnvError` (a ValueError) naming it.
    """
    if factory is None and name not in ENVS and not custom.is_module_path(name):
        raise ValueError(
            f"unknown env {name!r}; expected one of: {', '.join(ENVS)}; or the import path of a PettingZoo env module "
            "(e.g. pettingzoo.sisl.pursuit_v5), or a factory (module:callable)"
        )
    if is_custom(name, factory):
        if factory is not None and name in ENVS:
            raise custom.CustomEnvError(
                f"env.factory={factory!r} is set and env.name={name!r} names an env of the table; expected either a "
                "table env (no factory) or a factory with a free label as its name"
            )
        custom.check_options(name, options)  # before anything is imported or built

        def build_custom() -> Any:
            raw, _ = custom.build_raw_env(name, factory, options, render_mode)
            try:
                custom.check_spaces(name, raw)
            except custom.CustomEnvError:
                raw.close()
                raise
            return raw

        try:
            return TeamEnv(build_custom, team_reward=team_reward, use_state=use_state, history=history)
        except custom.CustomEnvError:
            raise
        except (ValueError, TypeError) as err:  # the team adapter's own checks, on an env nobody adapted
            raise custom.CustomEnvError(f"env '{name}': {err}") from err
    entry = env_entry(name)
    resolved = make_options(name, options)
    # A factory rather than a built env, so TeamEnv checks its own arguments before the raw env is built.
    return TeamEnv(
        lambda: entry.make(resolved, render_mode),
        team_reward=team_reward,
        use_state=use_state,
        history=history,
    )


def is_vectorised(name: str, factory: str | None = None) -> bool:
    """Whether env `name` is natively vectorised (its row has `make_vector`); envs by import path never are."""
    return not is_custom(name, factory) and env_entry(name).make_vector is not None


def make_team_vector_env(
    name: str,
    options: Mapping[str, Any] | Any | None = None,
    *,
    num_envs: int,
    team_reward: str = "mean",
    use_state: bool = False,
    history: int = 0,
) -> gymnasium.vector.VectorEnv:
    """`num_envs` copies of the natively vectorised env `name` as one gymnasium VectorEnv of team envs.

    Arguments as `make_team_env`; the VectorEnv's `single_observation_space` / `single_action_space` are the
    team env's.

    Raises:
        ValueError / TypeError: as `make_options`; a name whose env is not natively vectorised.
    """
    entry = env_entry(name)
    if entry.make_vector is None:
        vectorised = [key for key, row in ENVS.items() if row.make_vector is not None]
        raise ValueError(f"env {name!r} is not natively vectorised; expected one of: {', '.join(vectorised)}")
    return entry.make_vector(make_options(name, options), num_envs, team_reward, use_state, history)
