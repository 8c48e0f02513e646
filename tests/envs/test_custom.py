"""Any PettingZoo env by import path (envs/custom.py): envs nobody adapted for commformer are built, checked with
PettingZoo's own API tests and wrapped as team envs whose observations and rewards are the raw env's; everything
that cannot work is refused with a sentence naming the env, before anything trains.

The reference for the team env's contents is the raw env itself, built here directly from the same module with
the same keyword arguments and seed, and stepped with the same actions."""

from __future__ import annotations

import textwrap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from agents.build import probe_env
from agents.config import ConfigError, load_config
from envs import custom
from envs.registry import make_team_env


def _raw_parallel(module_name: str, attribute: str, options: dict) -> object:
    """The raw ParallelEnv as PettingZoo's docs build it, independently of envs/custom.py."""
    import importlib

    from pettingzoo.utils.conversions import aec_to_parallel

    module = importlib.import_module(module_name)
    built = getattr(module, attribute)(**options)
    return aec_to_parallel(built) if attribute == "env" else built


REAL_ENVS = [
    # (env.name, env.factory, options, module, attribute): a ParallelEnv module, an AEC env through a factory (converted
    # by PettingZoo's aec_to_parallel), and a heterogeneous team (mpe2's predators and prey differ in observation).
    ("pettingzoo.sisl.pursuit_v5", None, {"n_pursuers": 4, "n_evaders": 5, "max_cycles": 30}, None, "parallel_env"),
    (
        "kaz",
        "pettingzoo.butterfly.knights_archers_zombies_v11:env",
        {"num_archers": 1, "num_knights": 2, "max_cycles": 30},
        "pettingzoo.butterfly.knights_archers_zombies_v11",
        "env",
    ),
    ("mpe2.simple_tag_v3", None, {"num_good": 1, "num_adversaries": 2, "max_cycles": 30}, None, "parallel_env"),
]


@pytest.mark.parametrize(("name", "factory", "options", "module", "attribute"), REAL_ENVS, ids=lambda v: str(v)[:40])
def test_an_env_nobody_adapted_becomes_a_team_env_with_the_raw_envs_contents(name, factory, options, module, attribute):
    team = make_team_env(name, options, factory=factory)
    raw = _raw_parallel(module or name, attribute, options)
    try:
        agents = list(raw.possible_agents)
        assert team.agents == tuple(agents)
        assert isinstance(team.action_space, spaces.MultiDiscrete)
        assert list(team.action_space.nvec) == [team.n_actions] * len(agents)
        obs, _ = team.reset(seed=7)
        raw_obs, _ = raw.reset(seed=7)
        rng = np.random.default_rng(0)
        for step in range(12):
            for i, agent in enumerate(agents):
                if agent in raw_obs:
                    flat = spaces.flatten(raw.observation_space(agent), raw_obs[agent])
                    np.testing.assert_allclose(obs["obs"][i, : flat.shape[0]], flat, rtol=1e-6, err_msg=f"step {step}")
            actions = np.array([rng.integers(raw.action_space(a).n) for a in agents])
            obs, reward, terminated, truncated, _ = team.step(actions)
            raw_obs, raw_rewards, *_ = raw.step({a: int(actions[i]) for i, a in enumerate(agents) if a in raw.agents})
            assert reward == pytest.approx(sum(raw_rewards.values()) / len(agents))
            if terminated or truncated:
                break
    finally:
        team.close()
        raw.close()


@pytest.mark.parametrize(("name", "factory", "options", "module", "attribute"), REAL_ENVS, ids=lambda v: str(v)[:40])
def test_the_probe_passes_real_envs_and_reads_their_team_size(name, factory, options, module, attribute):
    overrides = [f"env.name={name}", "env.use_state=false", *(f"env.options.{k}={v}" for k, v in options.items())]
    if factory:
        overrides.append(f"env.factory={factory}")
    config = load_config(None, overrides)
    assert config.env.options == options  # plain keyword arguments, as given
    raw = _raw_parallel(module or name, attribute, options)
    try:
        assert probe_env(config).n_agents == len(raw.possible_agents)
    finally:
        raw.close()


def test_a_factory_without_a_name_is_labelled_by_its_path():
    config = load_config(None, ["env.factory=pettingzoo.sisl.pursuit_v5:parallel_env"])
    assert config.env.name == "pettingzoo.sisl.pursuit_v5:parallel_env"


# ---------------------------------------------------------------------------------------------------------------
# What is refused, and how it is said.


def _refused(overrides: list[str], *expected: str) -> str:
    with pytest.raises(ConfigError) as info:
        probe_env(load_config(None, overrides))
    message = str(info.value)
    for part in expected:
        assert part in message, message
    return message


def test_continuous_actions_pass_the_probe_and_give_a_box_per_agent():
    spaces = probe_env(load_config(None, ["env.name=mpe2.simple_tag_v3", "env.options.continuous_actions=true"]))
    assert isinstance(spaces.action_space, gym.spaces.Box) and spaces.action_space.shape == (4, 5)  # 3 + 1 agents


def test_a_team_mixing_continuous_and_discrete_actions_is_refused(tmp_path, monkeypatch):
    mixed = tmp_path / "mixed_actions_env.py"
    mixed.write_text(
        "from gymnasium import spaces\n"
        "from mpe2 import simple_spread_v3\n"
        "def make():\n"
        "    env = simple_spread_v3.parallel_env(N=2, continuous_actions=True)\n"
        "    box = env.action_space\n"
        "    env.action_space = lambda agent: spaces.Discrete(5) if agent == 'agent_0' else box(agent)\n"
        "    return env\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _refused(
        ["env.name=mixed", "env.factory=mixed_actions_env:make"],
        "env 'mixed'",
        "agents ['agent_1'] have continuous (Box) actions and agents ['agent_0'] discrete ones",
    )


def test_continuous_actions_with_the_autoregressive_decoder_are_refused_before_training():
    _refused(
        ["env.name=mpe2.simple_tag_v3", "env.options.continuous_actions=true", "model.decoder=autoregressive"],
        "continuous (Box) actions with model.decoder='autoregressive'",
    )


def test_an_aec_env_whose_agents_take_turns_is_refused():
    _refused(["env.name=pettingzoo.classic.tictactoe_v3"], "env 'pettingzoo.classic.tictactoe_v3'", "is_parallelizable")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["env.name=nopkg.envs.team_v0"], ["env 'nopkg.envs.team_v0'", "module 'nopkg.envs.team_v0' cannot be"]),
        (["env.name=json.decoder"], ["env 'json.decoder'", "neither parallel_env nor env"]),
        (["env.factory=pettingzoo.sisl.pursuit_v5:nope"], ["has no attribute 'nope'"]),
        (["env.factory=pettingzoo.sisl.pursuit_v5:__name__"], ["is a str, not callable"]),
        (["env.name=pettingzoo.sisl.pursuit_v5", "env.options.speed=3"], ["env 'pettingzoo.sisl.pursuit_v5'", "speed"]),
    ],
)
def test_bad_import_paths_name_the_env_and_what_was_expected(overrides, expected):
    _refused(overrides, *expected)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["env.name=mpe_sprd"], "env.name='mpe_sprd' is not a known env"),  # a typo, not a module
        (["env.factory=no colon here"], "not of the form module.path:callable"),
        (["env.factory=pettingzoo.sisl.pursuit_v5:parallel_env", "env.name=mpe_spread"], "names an env of the table"),
        (["env.name=a.b", "env.options={1: 2}"], "option key 1 is not a Python identifier"),
        (["env.name=a.b", "env.options.when=2024-01-02"], "env.options.when=datetime.date(2024, 1, 2)"),
        (["env.name=a.b", "env.options.x=.nan"], "env.options.x=nan; expected a finite number"),
        (["env.name=a.b", "env.options.render_mode=human"], "render_mode is set by commformer"),
        (["env.name=a.b", "env.options=[1]"], "is not a mapping"),
    ],
)
def test_bad_specs_are_refused_when_the_config_is_read(overrides, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, overrides)  # before anything is imported
    assert expected in str(info.value)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's env module (written to a temporary directory on sys.path): factories that work, raise, return
    something else or break the PettingZoo API."""
    package = tmp_path / "userenvs_custom"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "envs.py").write_text(
        textwrap.dedent(
            """
            import functools
            from gymnasium import spaces
            from pettingzoo import ParallelEnv
            from pettingzoo.sisl import pursuit_v5


            def make_env(n_pursuers=3):
                return pursuit_v5.parallel_env(n_pursuers=n_pursuers, n_evaders=3, max_cycles=20)


            def raises(**kwargs):
                raise RuntimeError("the map file is missing")


            def not_an_env(**kwargs):
                return {"agents": ["a"]}


            class OldReset(ParallelEnv):
                '''Breaks the API: reset() takes no seed.'''

                metadata = {"name": "old_reset"}
                possible_agents = ["a", "b"]

                def __init__(self, action=None):
                    self.agents = list(self.possible_agents)
                    self._action = action or spaces.Discrete(2)

                @functools.lru_cache(maxsize=None)
                def observation_space(self, agent):
                    return spaces.Box(0.0, 1.0, (2,))

                @functools.lru_cache(maxsize=None)
                def action_space(self, agent):
                    return self._action

                def reset(self):
                    self.agents = list(self.possible_agents)
                    return {a: self.observation_space(a).sample() for a in self.agents}, {a: {} for a in self.agents}

                def step(self, actions):
                    obs = {a: self.observation_space(a).sample() for a in self.agents}
                    zero = {a: 0.0 for a in self.agents}
                    false = {a: False for a in self.agents}
                    return obs, zero, false, dict(false), {a: {} for a in self.agents}


            def multi_discrete():
                return OldReset(spaces.MultiDiscrete([2, 2]))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userenvs_custom.envs"


def test_a_users_factory_gets_the_options_as_keyword_arguments(user_module):
    config = load_config(None, [f"env.factory={user_module}:make_env", "env.options.n_pursuers=5", "env.name=mine"])
    assert config.env.name == "mine"
    assert probe_env(config).n_agents == 5


def test_a_factory_that_raises_is_reported_with_the_env_name(user_module):
    _refused(
        [f"env.factory={user_module}:raises", "env.name=mine", "env.options.level=3"],
        "env 'mine'",
        f"{user_module}:raises(**{{'level': 3}}) raised RuntimeError: the map file is missing",
    )


def test_a_factory_that_returns_no_env_is_refused(user_module):
    _refused([f"env.factory={user_module}:not_an_env"], "returned dict; expected a PettingZoo ParallelEnv or AECEnv")


def test_an_api_violation_is_found_by_pettingzoos_own_test(user_module):
    message = _refused(
        [f"env.factory={user_module}:OldReset", "env.use_state=false"],
        f"env '{user_module}:OldReset' fails PettingZoo's parallel_api_test",
        f"within {custom.API_TEST_CYCLES} cycles",
        "seed",
    )
    assert "TypeError" in message


def test_other_non_discrete_actions_are_refused(user_module):
    _refused(
        [f"env.factory={user_module}:multi_discrete", "env.use_state=false"],
        "has action space MultiDiscrete([2 2]); expected Discrete actions",
    )


def test_use_state_on_an_env_without_a_state_names_the_env():
    _refused(["env.name=pettingzoo.classic.rps_v2", "env.use_state=true"], "env 'pettingzoo.classic.rps_v2'", "state")


def test_the_api_test_is_bounded(monkeypatch):
    """The probe's API tests run at most API_TEST_CYCLES cycles, whatever the env's own episode length."""
    from pettingzoo.sisl import pursuit_v5

    steps = []
    original = pursuit_v5.raw_env.step

    def counting(self, action):
        steps.append(1)
        return original(self, action)

    monkeypatch.setattr(pursuit_v5.raw_env, "step", counting)
    custom.api_test("pettingzoo.sisl.pursuit_v5", None, {"n_pursuers": 2, "max_cycles": 10_000})
    # parallel_api_test: two resets of at most API_TEST_CYCLES cycles of 2 agents each (the first reset is seeded
    # only), through the AEC env pursuit's parallel_env wraps.
    assert 0 < len(steps) <= 2 * custom.API_TEST_CYCLES * 2
