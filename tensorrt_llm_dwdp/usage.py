"""Bad input at the command line: one line, exit code 2, no traceback.

Every command parses with `Parser` (whose errors raise instead of printing usage) and runs its
validation inside `one_line_errors`, so a wrong option reads the same whichever check found it.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from typing import Callable, Mapping, Optional

from .config import DwdpConfigError

EXIT_USAGE = 2


class UsageError(ValueError):
    """A command-line option is invalid; the message names the option, the value and the fix."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error raises UsageError (the caller prints one line) instead of usage + exit, and
    option names are matched whole (an abbreviation would silently change meaning as options are added)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{message}. Fix: see {self.prog} --help.")


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def fail(prog: str, err) -> int:
    """Print `prog: error: <err>` as one line on stderr; return the usage exit code."""
    print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def one_line_errors(prog: str, fn: Callable[..., int], *args) -> int:
    """fn(*args), with a ValueError (DwdpConfigError, UsageError, ...) or OSError reported as one line."""
    try:
        return fn(*args)
    except (ValueError, OSError) as e:
        return fail(prog, e)


def positive(option: str, value, fix: str, allow_zero: bool = False) -> None:
    """Raise UsageError unless value is an integer >= 1 (>= 0 with allow_zero)."""
    low = 0 if allow_zero else 1
    if value is None or isinstance(value, bool) or not float(value) >= low or int(value) != value:
        raise UsageError(f"{option} {value}: must be an integer >= {low}. Fix: {fix}.")


def check_output_path(option: str, path: Optional[str], directory: bool = False) -> None:
    """Fail before the run, not after it, when an output cannot be written where the user asked."""
    if not path:
        return
    target = path if directory else (os.path.dirname(os.path.abspath(path)) or ".")
    probe = target
    while not os.path.exists(probe):  # a folder to be created: its nearest existing parent must be writable
        probe = os.path.dirname(probe)
    if directory and os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a file, not a folder. Fix: name a folder.")
    if not directory and os.path.isdir(path):
        raise UsageError(f"{option} {path}: is a folder. Fix: name a file, e.g. {os.path.join(path, 'bench.json')}.")
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {probe} is not a writable folder. Fix: choose a path you can write.")


@contextmanager
def options_named(flags: Mapping[str, str]):
    """Re-raise a DwdpConfigError on a field the command sets from a flag so the line names the flag too
    (`--depth: prefetch_depth=1: ...`)."""
    try:
        yield
    except DwdpConfigError as e:
        if e.option not in flags:
            raise
        raise UsageError(f"{flags[e.option]}: {e}") from None
