"""`commformer` command line: train, evaluate, rollout, envs.

    commformer train [CONFIG] [key=value ...] [--resume RUN_DIR [--trust-checkpoint]]
    commformer evaluate RUN_DIR|CHECKPOINT [--episodes N] [--seed S] [--early-exit | --sample-gates | --sample]
                        [--json FILE] [--render FILE.gif] [--trust-env]
    commformer rollout ENV [--checkpoint C [--early-exit | --sample-gates | --sample] [--trust-env]] [--episodes N]
                       [--seed S] [--render FILE.gif] [option=value ...]

ENV is a name of the env table, the import path of any PettingZoo env module (pettingzoo.sisl.pursuit_v5), or
module:callable (a factory; the options are its keyword arguments).
    commformer sweep CONFIG [--seeds S ...] [key=v1,v2 ...] [key=value ...] [--name NAME]
    commformer report RUNS... [--out DIR]
    commformer envs

Every input is validated before any work starts; errors name what was wrong and what was expected, and exit
with status 2. A run stopped by the fault limit (faults.max_bad_iterations) exits with status 3.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "configs/mpe_spread.yaml"
EARLY_EXIT_HELP = "act through the learned early exits (model.early_exit) and report depths, MACs and calibration"
SAMPLE_HELP = "act as the training rollouts do: the actions and the gates' decisions drawn (seeded by --seed)"
SAMPLE_GATES_HELP = (
    "draw the temporal gates' decisions as in training (seeded by --seed); the actions stay greedy. Without it a gate "
    "opens iff its probability is above 0.5"
)
TRUST_ENV_HELP = (
    "build the env by import path that the policy's metadata names although its checkpoint is not known to be yours "
    "(importing and calling it runs code)"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


MAX_SEED = 2**32 - 1
"""Episode i is seeded seed + i; below 2**32 every env here takes it (SMAX's JAX keys overflow past 2**63)."""


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed in [0, {MAX_SEED}], got '{text}'") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be >= 0 and <= {MAX_SEED}, got {value}")
    return value


def _gif_path(text: str) -> str:
    if not text.lower().endswith(".gif"):
        raise argparse.ArgumentTypeError(f"expected a file name ending in .gif, got '{text}'")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="commformer", description="CommFormer multi-agent RL on Ray RLlib.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a team (embedded local Ray unless RAY_ADDRESS is set)")
    train.add_argument("config", nargs="?", help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. run.seed=3")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    train.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="resume from a checkpoint this user did not write here (its RLlib state is pickle: it can run code)",
    )

    evaluate = sub.add_parser("evaluate", help="play greedy episodes with a trained policy (no Ray needed)")
    evaluate.add_argument("path", metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument("--episodes", type=_positive_int, default=20)
    evaluate.add_argument("--seed", type=_seed, default=0)
    evaluate.add_argument("--early-exit", action="store_true", help=EARLY_EXIT_HELP)
    evaluate.add_argument("--sample-gates", action="store_true", help=SAMPLE_GATES_HELP)
    evaluate.add_argument("--sample", action="store_true", help=SAMPLE_HELP)
    evaluate.add_argument("--json", metavar="FILE", help="write the results as JSON")
    evaluate.add_argument("--render", metavar="FILE.gif", type=_gif_path, help="record the first episode")
    evaluate.add_argument("--trust-env", action="store_true", help=TRUST_ENV_HELP)

    rollout = sub.add_parser("rollout", help="step an env with a random or trained policy")
    rollout.add_argument(
        "env", help="env name (see `commformer envs`), a PettingZoo env module's import path, or module:callable"
    )
    rollout.add_argument("options", nargs="*", metavar="option=value", help="env options, e.g. n_agents=5")
    rollout.add_argument("--checkpoint", metavar="C", help="act with this run's / checkpoint's policy")
    rollout.add_argument("--early-exit", action="store_true", help=EARLY_EXIT_HELP)
    rollout.add_argument("--sample-gates", action="store_true", help=SAMPLE_GATES_HELP)
    rollout.add_argument("--sample", action="store_true", help=SAMPLE_HELP)
    rollout.add_argument("--episodes", type=_positive_int, default=3)
    rollout.add_argument("--seed", type=_seed, default=0)
    rollout.add_argument("--render", metavar="FILE.gif", type=_gif_path, help="record every episode")
    rollout.add_argument("--trust-env", action="store_true", help=TRUST_ENV_HELP)

    sweep = sub.add_parser(
        "sweep", help="seeds x a grid of config values as Ray Tune trials, each an ordinary run (re-run to resume)"
    )
    sweep.add_argument("config", help="experiment YAML")
    sweep.add_argument(
        "overrides",
        nargs="*",
        metavar="key=v1,v2|key=value",
        help="a grid axis (values split at commas) or an override every trial shares",
    )
    sweep.add_argument(
        "--seeds", nargs="+", default=None, metavar="S", help="seeds of every grid point (default: the config's)"
    )
    sweep.add_argument("--name", help="the sweep's directory under run.output_dir (default: CONFIG's stem + -sweep)")

    report = sub.add_parser(
        "report", help="mean and IQM with 95% CIs, probability of improvement, curves and a marl-eval JSON of runs"
    )
    report.add_argument("runs", nargs="+", metavar="RUNS", help="run directories, or directories holding runs")
    report.add_argument("--out", default="report", metavar="DIR", help="where to write the report (default: report)")

    sub.add_parser("envs", help="list the environments and their options")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from agents.train import prepare_run, train
    from commformer.typed import ConfigError

    overrides = list(args.overrides)
    config_path = args.config
    if config_path is not None and "=" in config_path and not Path(config_path).exists():
        overrides.insert(0, config_path)  # `commformer train run.seed=3` - an override, not a file
        config_path = None
    if config_path is None and args.resume is None:
        config_path = DEFAULT_CONFIG
    if args.trust_checkpoint and args.resume is None:
        raise ConfigError("--trust-checkpoint applies to --resume RUN_DIR; expected --resume as well")
    config, run_dir = prepare_run(config_path, overrides, args.resume, args.trust_checkpoint)
    print(f"run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})", flush=True)
    train(config, run_dir, resume=args.resume is not None)
    return 0


def _print_table(summary: dict[str, Any]) -> None:
    """One line per figure; nested figures (e.g. the gate open rate given each env fact) as dotted keys."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", summary)
    width = max(len(k) for k in flat)
    for key, value in flat.items():
        text = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        print(f"  {key:<{width}}  {text}")


def _print_early_exit(report: dict[str, Any]) -> None:
    """The early-exit section of evaluate / rollout as a table (nested values flattened to one line)."""
    print("  early exits:")
    flat = {}
    for key, value in report.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {'n/a' if v is None else round(v, 4)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join("n/a" if v is None else str(round(v, 4)) for v in value)
        flat[f"  {key}"] = value
    _print_table(flat)


def _actor(policy: Any, args: argparse.Namespace, use_state: bool) -> Any:
    """The actor `args` ask for: greedy (drawing the gates with `--sample-gates`), drawing gates and actions as the
    training rollouts do (`--sample`), or acting through the early exits (`--early-exit`); asking for two, or for
    exits or gates a policy lacks, is an input error."""
    import torch

    from agents.play import EarlyExitActor, greedy_actor, sampling_actor
    from commformer.typed import ConfigError

    chosen = [
        flag
        for flag, on in (
            ("--early-exit", args.early_exit),
            ("--sample-gates", args.sample_gates),
            ("--sample", args.sample),
        )
        if on
    ]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} cannot be combined; expected one of them")
    if args.sample_gates and not policy.trunk.learns_gates:
        raise ConfigError(
            "--sample-gates draws the temporal gates' decisions, but this policy has no learned gates "
            "(model.gates.enabled was false, communication was off, or it is in its graph warm-up); "
            "expected a gated policy"
        )
    if args.sample or args.sample_gates:
        torch.manual_seed(args.seed)  # the draws, repeatable with --seed
    if args.sample:
        return sampling_actor(policy, use_state=use_state)
    if not args.early_exit:
        return greedy_actor(policy, use_state=use_state, sample_gates=args.sample_gates)
    try:
        return EarlyExitActor(policy, use_state=use_state)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def _load_trained(path: str, trust_env: bool = False) -> tuple[Any, dict[str, Any], Path]:
    """The exported policy of a run or checkpoint, its metadata (with a checked env section) and the checkpoint."""
    from agents import checkpoints as ckpt
    from commformer.export import SPEC, load_policy

    checkpoint = ckpt.resolve_checkpoint(path)
    policy, metadata = load_policy(checkpoint / ckpt.POLICY)
    _check_env_section(metadata.get("env"), checkpoint / ckpt.POLICY / SPEC, checkpoint, trust_env)
    return policy, metadata, checkpoint


def _check_env_section(section: Any, spec_path: Path, checkpoint: Path, trust_env: bool) -> None:
    """The metadata's env section names an env of this build or one by import path, with options as a mapping (a
    PolicyFileError if not: the policy cannot be played on the env it was trained on).

    A policy file is data, but an env by import path in its metadata is code that building the env imports and
    calls (`os:system` would be a factory too). So such an env is built only from a checkpoint known to be this
    user's (its signed algorithm/, agents/checkpoints.py) or on `--trust-env`.
    """
    from agents import checkpoints as ckpt
    from commformer.export import PolicyFileError
    from envs import custom
    from envs.registry import ENVS

    if not isinstance(section, dict):
        raise PolicyFileError(
            f"'{spec_path}' has metadata.env={section!r:.80}; expected the env section the policy was trained with "
            "(an object with name and options)"
        )
    name, factory = section.get("name"), section.get("factory")
    if factory is not None and not isinstance(factory, str):
        raise PolicyFileError(f"'{spec_path}' has metadata.env.factory={factory!r:.80}; expected module:callable")
    is_custom = isinstance(name, str) and (factory is not None or (name not in ENVS and custom.is_module_path(name)))
    if not isinstance(name, str) or (name not in ENVS and not is_custom):
        raise PolicyFileError(
            f"'{spec_path}' names env {name!r:.80}, which this build does not have; expected one of: {', '.join(ENVS)}"
            " or a PettingZoo env module's import path"
        )
    if not isinstance(section.get("options") or {}, dict):
        raise PolicyFileError(f"'{spec_path}' has metadata.env.options={section['options']!r:.80}; expected an object")
    if is_custom and not trust_env:
        untrusted = ckpt.algorithm_trust(checkpoint)
        if untrusted is not None:
            raise PolicyFileError(
                f"'{spec_path}' names the env '{factory or name}' by import path, and the checkpoint is not known to "
                f"be yours ({untrusted}); building it imports and calls that code. If you trust where it came from, "
                "pass --trust-env"
            )


def _make_env(env_section: dict[str, Any], render: bool, policy: Any = None, source: Path | None = None) -> Any:
    """Builds the team env named by a config's env section, with the history window `policy` reads (if any), and
    checks that `policy` (if any) fits it; bad names or options, or a policy that does not fit, become a
    ConfigError, or a PolicyFileError naming `source` when the section came from that policy file."""
    from agents.play import check_policy_fits, make_play_env
    from commformer.export import PolicyFileError
    from commformer.typed import ConfigError

    env = None
    try:
        env = make_play_env(env_section, policy, render_mode="rgb_array" if render else None)
        if policy is not None:
            check_policy_fits(policy, env, env_section)
        return env
    except (TypeError, ValueError) as err:
        if env is not None:
            env.close()
        if source is not None:
            raise PolicyFileError(f"'{source}' metadata.env: {err}") from err
        raise ConfigError(str(err)) from err


def _check_output(path: str | None, flag: str) -> None:
    """Refuses an output path that cannot be written, before any episode is played: a directory, a path under a
    file, a directory without write permission. Creates the parent directories, as writing the file would."""
    import tempfile

    from commformer.typed import ConfigError

    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} '{path}' is a directory; expected the path of a file to write")
    expected = "expected a file path in a writable directory"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if isinstance(err, FileExistsError):
            reason = f"'{err.filename}' is a file"
        elif isinstance(err, NotADirectoryError):
            reason = f"a parent of '{err.filename}' is a file"
        else:
            reason = err.strerror or str(err)
        raise ConfigError(
            f"{flag} '{path}' cannot be written: its directory cannot be created ({reason}); {expected}"
        ) from err
    try:
        if target.exists():
            with open(target, "r+b"):  # writable; left as it is until the results are written
                pass
        else:
            with tempfile.TemporaryFile(dir=target.parent):
                pass
    except OSError as err:
        raise ConfigError(
            f"{flag} '{path}' cannot be written: no file can be written in '{target.parent}' ({err.strerror}); "
            f"{expected}"
        ) from err


def cmd_evaluate(args: argparse.Namespace) -> int:
    from agents import checkpoints as ckpt
    from agents.play import play, write_gif
    from commformer.export import SPEC

    policy, metadata, checkpoint = _load_trained(args.path, args.trust_env)
    env_section = metadata["env"]
    source = checkpoint / ckpt.POLICY / SPEC
    env = _make_env(env_section, render=args.render is not None, policy=policy, source=source)
    frames: list[Any] | None = [] if args.render else None
    try:
        _check_output(args.json, "--json")  # before any episode: a bad path should not cost the evaluation
        _check_output(args.render, "--render")
        # Record only the first episode: a GIF of twenty episodes is too long to watch.
        actor = _actor(policy, args, bool(env_section.get("use_state")))
        stats = play(env, actor, 1, seed=args.seed, frames=frames)
        rest = play(env, actor, args.episodes - 1, seed=args.seed + 1)
    finally:
        env.close()
    stats.extend(rest)
    summary = {"checkpoint": str(checkpoint), "env": env_section["name"], **stats.summary()}
    if args.early_exit:
        summary["early_exit"] = actor.report()
    how = "actions and gates drawn" if args.sample else "greedy" + (", gates drawn" if args.sample_gates else "")
    print(f"evaluated {checkpoint} on {env_section['name']} ({args.episodes} episodes, {how})")
    _print_table({k: v for k, v in summary.items() if k not in ("checkpoint", "env", "early_exit")})
    if args.early_exit:
        _print_early_exit(summary["early_exit"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    if frames is not None:
        print(f"wrote {write_gif(frames, args.render)}")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from agents.config import ConfigError, parse_override
    from agents.play import play, random_actor, write_gif
    from envs import custom
    from envs.registry import ENVS

    if args.early_exit and not args.checkpoint:
        raise ConfigError("--early-exit acts through a trained policy's exits; expected --checkpoint C as well")
    if args.sample_gates and not args.checkpoint:
        raise ConfigError("--sample-gates draws a trained policy's gates; expected --checkpoint C as well")
    if args.sample and not args.checkpoint:
        raise ConfigError("--sample draws a trained policy's actions; expected --checkpoint C as well")
    if args.trust_env and not args.checkpoint:
        raise ConfigError("--trust-env applies to the env a --checkpoint's metadata names; expected --checkpoint C")
    name, factory = args.env, None
    if ":" in args.env:  # module:callable
        name = factory = args.env
        try:
            custom.check_factory_path(factory)
        except custom.CustomEnvError as err:
            raise ConfigError(str(err).replace("env.factory=", "ENV ")) from err
    elif args.env not in ENVS and not custom.is_module_path(args.env):
        raise ConfigError(
            f"unknown env '{args.env}'; expected one of: {', '.join(ENVS)}; or a PettingZoo env module's import path "
            "(e.g. pettingzoo.sisl.pursuit_v5), or module:callable"
        )
    options: dict[str, Any] = {}
    for text in args.options:
        keys, value = parse_override(text)
        options[".".join(keys)] = value
    use_state = False
    policy = None
    if args.checkpoint:
        policy, metadata, checkpoint = _load_trained(args.checkpoint, args.trust_env)
        trained = metadata["env"].get("factory") or metadata["env"]["name"]
        if trained != args.env:
            raise ConfigError(f"--checkpoint {checkpoint} was trained on '{trained}', not on '{args.env}'")
        name = metadata["env"]["name"]
        options = {**(metadata["env"].get("options") or {}), **options}
        use_state = bool(metadata["env"].get("use_state"))
        actor = _actor(policy, args, use_state)
        who = f"policy of {checkpoint}" + (" (early exits)" if args.early_exit else "")
        who += " (gates drawn)" if args.sample_gates else " (actions and gates drawn)" if args.sample else ""
    else:
        actor = None  # built with the env: a random continuous action needs the env's boxes
        who = "random policy"
    if name not in ENVS or factory is not None:  # an env by import path: the checks training runs before Ray
        try:
            custom.probe(name, factory, options)
        except custom.CustomEnvError as err:
            raise ConfigError(str(err)) from err
    env = _make_env(
        {"name": name, "factory": factory, "options": options, "use_state": use_state},
        render=args.render is not None,
        policy=policy,
    )
    if actor is None:
        actor = random_actor(args.seed, env)
    frames: list[Any] | None = [] if args.render else None
    try:
        _check_output(args.render, "--render")  # before any episode is played
        print(f"{args.env}: {env.n_agents if hasattr(env, 'n_agents') else '?'} agents, {who}")
        stats = play(
            env,
            actor,
            args.episodes,
            seed=args.seed,
            frames=frames,
            on_episode=lambda i, ret, n: print(f"  episode {i + 1}: return {ret:.3f}, length {n}"),
        )
    finally:
        env.close()
    _print_table(stats.summary())
    if args.early_exit:
        _print_early_exit(actor.report())
    if frames is not None:
        print(f"wrote {write_gif(frames, args.render)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from agents.config import load_config
    from agents.sweep import main_sweep
    from commformer.typed import ConfigError

    # `--seeds 0 1 key=a,b` : argparse gives --seeds every word after it; the first key=value ends the seeds.
    seeds_text: list[str] = list(args.seeds or [])
    overrides = list(args.overrides)
    for i, text in enumerate(seeds_text):
        if "=" in text:
            overrides = seeds_text[i:] + overrides
            seeds_text = seeds_text[:i]
            break
    seeds = []
    for text in seeds_text:
        try:
            seeds.append(_seed(text))
        except argparse.ArgumentTypeError as err:
            raise ConfigError(f"--seeds: {err}") from None
    if args.seeds is None:
        seeds = [load_config(args.config).run.seed]
    main_sweep(args.config, seeds, overrides, args.name)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from agents.report import report

    report(args.runs, args.out)
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    import dataclasses

    from envs.registry import ENVS

    for name, entry in ENVS.items():
        print(f"{name}: {entry.description}")
        for f in dataclasses.fields(entry.options_cls):
            print(f"    {f.name} = {f.default!r}")
    print(
        "any other PettingZoo env: env.name=<import path of its module> (e.g. pettingzoo.sisl.pursuit_v5) or "
        "env.factory=module:callable; env.options are its keyword arguments"
    )
    return 0


DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}
"""Faults of the disk or of permissions (a full disk while TensorBoard writes, a directory made read-only under a
run): a sentence, not a traceback. Other OSErrors are bugs or Ray's and keep their traceback."""

COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "rollout": cmd_rollout,
    "sweep": cmd_sweep,
    "report": cmd_report,
    "envs": cmd_envs,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # pygame renders off-screen: no display needed
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling `key=value ...` at the first option: `train CONFIG --resume RUN stop.env_steps=N` leaves
    # the override over. Such trailing key=value words belong to the command's list; anything else is an error.
    listed = {"train": "overrides", "rollout": "options"}.get(args.command)
    if extra and listed and all("=" in word and not word.startswith("-") for word in extra):
        setattr(args, listed, [*getattr(args, listed), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from agents.checkpoints import CheckpointError
    from commformer.export import PolicyFileError
    from commformer.typed import ConfigError

    try:
        return COMMANDS[args.command](args)
    except (ConfigError, CheckpointError, PolicyFileError) as err:
        print(f"commformer {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from agents.faults import FaultLimitError

        if not isinstance(err, FaultLimitError):
            raise
        print(f"commformer {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        where = f" ('{err.filename}')" if err.filename else ""
        print(f"commformer {args.command}: error: {err.strerror}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        from agents.train import Terminated

        how, status = ("terminated (SIGTERM)", 143) if isinstance(err, Terminated) else ("interrupted", 130)
        print(f"commformer {args.command}: {how}; the last complete checkpoint is intact", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
