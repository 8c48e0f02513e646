"""What a user sees on the console: lines from Ray's C++ core that look like failures but are not.

Ray's core worker writes its log lines straight to file descriptor 2 from C++, past Python's `sys.stderr` and the
`logging` module, so the only way to keep a known-harmless one off the console is to read fd 2 through a pipe for
a while and pass every other line on unchanged.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Sequence

HARMLESS_RAY_LINES = (
    # RLlib puts the AlgorithmConfig in the object store once (`ray.put`) and passes the reference to every
    # EnvRunner it creates; with restarts on (`faults.restart_env_runners`) Ray's core worker then logs, at error
    # level, that a restart would fail if that object were lost. RLlib keeps the reference for the run's lifetime.
    "has constructor arguments in the object store and max_restarts > 0",
)


@contextlib.contextmanager
def drop_stderr_lines(fragments: Sequence[str] = HARMLESS_RAY_LINES) -> Iterator[None]:
    """Within the block, lines written to fd 2 (by Python or C++) that contain one of `fragments` are dropped; every
    other line reaches the real stderr as it is written. Lines are forwarded whole, so output from two writers is
    not interleaved mid-line."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not any(fragment.encode() in line for fragment in fragments):
                        os.write(real, line + b"\n")
            if pending:
                os.write(real, pending)

    reader = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    reader.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the reader drains it and stops
        reader.join(timeout=5)
        os.close(real)
