"""envs/mpe.py: the `JointObsState` wrapper against mpe2's own `state()`, the reference."""

from __future__ import annotations

import numpy as np
import pytest

from envs import mpe
from envs.registry import make_team_env


@pytest.mark.parametrize(
    "factory, options",
    [
        (mpe.simple_spread, mpe.SpreadOptions(n_agents=4, max_cycles=12)),
        (mpe.simple_reference, mpe.ReferenceOptions(max_cycles=12)),
        (mpe.simple_speaker_listener, mpe.SpeakerListenerOptions(max_cycles=12)),  # unequal obs sizes
    ],
)
def test_state_equals_mpe2s_recomputed_state_at_every_step(factory, options):
    env = factory(options)
    assert isinstance(env, mpe.JointObsState)
    rng = np.random.default_rng(0)
    for episode in range(2):
        env.reset(seed=episode)
        np.testing.assert_array_equal(env.state(), env.env.state())
        while env.agents:
            env.step({a: int(rng.integers(env.action_space(a).n)) for a in env.agents})
            state = env.state()
            assert state.dtype == np.float32
            np.testing.assert_array_equal(state, env.env.state())  # also after the last step (agents empty)
    env.close()


def test_team_env_state_is_unchanged_by_the_wrapper():
    """TeamEnv over the wrapped env gives the same state as over mpe2's env with its own state()."""
    from mpe2 import simple_spread_v3

    from envs.team import TeamEnv

    wrapped = make_team_env("mpe_spread", {"n_agents": 3, "max_cycles": 8}, use_state=True)
    raw = TeamEnv(lambda: simple_spread_v3.parallel_env(N=3, max_cycles=8, continuous_actions=False), use_state=True)
    obs_a, _ = wrapped.reset(seed=3)
    obs_b, _ = raw.reset(seed=3)
    rng = np.random.default_rng(1)
    for _ in range(8):  # to the end of the episode
        np.testing.assert_array_equal(obs_a["state"], obs_b["state"])
        np.testing.assert_array_equal(obs_a["obs"], obs_b["obs"])
        action = rng.integers(0, 5, size=3)
        obs_a, *_ = wrapped.step(action)
        obs_b, *_ = raw.step(action)
    np.testing.assert_array_equal(obs_a["state"], obs_b["state"])


def test_the_mpe2_facts_the_module_docstring_states():
    """envs/mpe.py relies on these sizes of the pinned mpe2; an upgrade that changes one fails here first."""
    spread = mpe.simple_spread(mpe.SpreadOptions(n_agents=4))
    reference = mpe.simple_reference(mpe.ReferenceOptions())
    speaker_listener = mpe.simple_speaker_listener(mpe.SpeakerListenerOptions())
    sizes = {
        name: {a: (env.observation_space(a).shape, env.action_space(a).n) for a in env.possible_agents}
        for name, env in (("spread", spread), ("reference", reference), ("speaker_listener", speaker_listener))
    }
    assert set(sizes["spread"].values()) == {((6 * 4,), 5)}
    assert set(sizes["reference"].values()) == {((21,), 50)}
    assert sorted(sizes["speaker_listener"].values()) == [((3,), 3), ((11,), 5)]
    for env in (spread, reference, speaker_listener):
        env.close()
