"""The `hydraopt` command: the console script and `python -m hydraopt`.

The command line is the C++ executable (tools/hydraopt.cc) the wheel carries
in `hydraopt/bin/`; this replaces the Python process with it, so its exit
status, output and signals are the executable's own.
"""
import os
import pathlib
import sys


def executable() -> pathlib.Path:
    """Where the packaged `hydraopt` executable is (it may be missing: see main)."""
    return pathlib.Path(__file__).resolve().parent / "bin" / "hydraopt"


def main() -> None:
    exe = executable()
    if not os.access(exe, os.X_OK):
        sys.exit(f"hydraopt: the command-line tool is not part of this installation ({exe} is missing); "
                 "a wheel built with `pip install .` carries it, a CMake install puts it in PREFIX/bin")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, ["hydraopt", *sys.argv[1:]])
