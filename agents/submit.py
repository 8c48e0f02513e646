"""Entry script for `ray submit` and `ray job submit`: trains on the running Ray cluster.

    ray submit docker/cluster.yaml agents/submit.py -- CONFIG [key=value ...] [--resume RUN_DIR]
    ray job submit --address http://HEAD:8265 -- python -m agents.submit CONFIG [key=value ...]

`ray submit` copies this one file to the head node and runs it there with `python`, inside the commformer
image, where the package is installed; so it imports only the installed package. It joins the cluster it runs
on (RAY_ADDRESS, else "auto") instead of starting an embedded Ray, and finds CONFIG either as given or, for a
relative path such as configs/mpe_spread.yaml, under the installed project's root (the image's
/opt/commformer). Everything else is `commformer train`: the same validation, progress, checkpoints and exit
codes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _resolve(argv: list[str]) -> list[str]:
    """Drops a leading `--` (ray submit passes it through) and finds a relative CONFIG in the project root."""
    args = argv[1:] if argv[:1] == ["--"] else list(argv)
    if args and not args[0].startswith("-") and "=" not in args[0] and not Path(args[0]).exists():
        import agents

        candidate = Path(agents.__file__).resolve().parents[1] / args[0]
        if candidate.is_file():
            args[0] = str(candidate)
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_ADDRESS", "auto")  # join the cluster this runs on; never start a second Ray
    from agents.cli import main as cli_main

    return cli_main(["train", *_resolve(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
