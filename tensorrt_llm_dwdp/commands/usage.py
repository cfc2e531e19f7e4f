"""Bad input at the command line: one line, exit code 2, no traceback.

Every command parses with `Parser` (whose errors raise instead of printing usage) and runs its
validation inside `one_line_errors`, so a wrong option reads the same whichever check found it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from contextlib import contextmanager
from typing import IO, Callable, Mapping, Optional

from ..config import DwdpConfigError

EXIT_USAGE = 2


class UsageError(ValueError):
    """A command-line option is invalid; the message names the option, the value and the fix."""


def finite_float(text: str) -> float:
    """argparse type: a float that is neither NaN nor infinite (NaN passes every `x > 0` check and loops
    or allocates without bound downstream)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


finite_float.__name__ = "finite number"  # argparse names the type in its message: "invalid finite number value"


class Parser(argparse.ArgumentParser):
    """argparse, but an error raises UsageError (the caller prints one line) instead of usage + exit, option
    names are matched whole (an abbreviation would silently change meaning as options are added), and a
    float option takes finite numbers only."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.register("type", float, finite_float)

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


def check_output_path(option: str, path: Optional[str], directory: bool = False, suffix: str = ".json") -> None:
    """Fail before the run, not after it, when an output cannot be written where the user asked. Folders
    that do not exist yet are fine (`open_output` / `make_output_dir` create them): their nearest existing
    parent must be a writable folder."""
    if path is None:
        return
    if not path.strip():
        raise UsageError(f"{option} {path!r}: is empty. Fix: name a {'folder' if directory else 'file'}, or leave "
                         f"{option} out.")
    if "\0" in path:
        raise UsageError(f"{option} {path!r}: holds a NUL character. Fix: name a file you can write.")
    full = os.path.abspath(path)  # NOTE: a relative path walks up to '', which never exists: loop on the absolute one
    probe = full if directory else os.path.dirname(full)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if directory and os.path.exists(full) and not os.path.isdir(full):
        raise UsageError(f"{option} {path}: is a file, not a folder. Fix: name a folder.")
    if not directory and (os.path.isdir(full) or path.endswith(os.sep)):
        raise UsageError(f"{option} {path}: is a folder. Fix: name a file in it, e.g. "
                         f"{os.path.join(path, 'out' + suffix)}.")
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {probe} is not a writable folder. Fix: choose a path you can write.")
    if not directory and os.path.exists(full) and not os.access(full, os.W_OK):
        raise UsageError(f"{option} {path}: the file is not writable. Fix: choose a path you can write.")


def open_output(path: str, mode: str = "w") -> IO:
    """Open an output file that `check_output_path` accepted, creating its folders."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, mode)


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
