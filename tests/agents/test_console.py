"""`drop_stderr_lines`: lines written to file descriptor 2 (as Ray's C++ core writes them) are filtered whole."""

from __future__ import annotations

import os

from agents.console import drop_stderr_lines


def test_only_the_named_lines_are_dropped_and_the_rest_arrive_whole(capfd):
    with drop_stderr_lines(["harmless"]):
        os.write(2, b"[E core_worker.cc] a harmless line\nkept 1\n")
        os.write(2, b"kept ")  # a line written in two pieces arrives as one
        os.write(2, b"2\nanother harmless one\n")
        os.write(2, b"no newline at the end")
    os.write(2, b"\nafter: harmless, but the filter is gone\n")
    err = capfd.readouterr().err
    assert err == "kept 1\nkept 2\nno newline at the end\nafter: harmless, but the filter is gone\n"
