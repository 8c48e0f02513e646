"""Environment adapters: every environment becomes one team `gymnasium.Env` (docs/DESIGN.md,
"One team, one RLlib agent").

- `TeamEnv` wraps any PettingZoo ParallelEnv: obs (N, D), action_mask (N, A), alive (N,), optional state, and
  with `history=L` the last L team observations (L, N, D) for the policy's history encoders.
- `ENVS` is the one table of env names; `make_team_env(name, options)` builds one, `make_options` only checks
  the options.

This package knows nothing of models, torch or RLlib.
"""

from envs.registry import ENVS, EnvEntry, make_options, make_team_env
from envs.team import TeamEnv

__all__ = ["ENVS", "EnvEntry", "TeamEnv", "make_options", "make_team_env"]
