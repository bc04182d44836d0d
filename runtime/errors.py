"""User-facing errors of the runtime.

Everything a user can get wrong (a missing file, a corrupt engine, a manifest that does not
match, an unwritable output directory) raises one of these with a one-line message; the CLI
prints that line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class DeqRuntimeError(Exception):
    """Base class: the message is one line meant for the user."""

    exit_code = 2


class BundleError(DeqRuntimeError):
    """The engine bundle (manifest.json + engine files) is missing, corrupt or inconsistent."""


class EngineError(DeqRuntimeError):
    """An engine file cannot be loaded by its backend (wrong kind, corrupt, backend missing)."""


class SourceError(DeqRuntimeError):
    """The input cannot be opened or decoded."""


class OutputError(DeqRuntimeError):
    """The output directory or a file in it cannot be written."""


class Interrupted(BaseException):
    """SIGTERM before the loop's own handler, or a second stop signal: the CLI exits 130 after one line.

    Not a KeyboardInterrupt on purpose: CPython exits by killing itself with SIGINT (status -2 instead of our 130)
    when the last code an extension ran through ``PyRun_String`` (pybind11's ``exec``) ended in a KeyboardInterrupt,
    even one we caught later. A BaseException, so that libraries' ``except Exception`` do not swallow it."""


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, as every other error of the CLIs is (argparse prints the
    whole usage text first: 24 lines for ``runtime.run``); ``--help`` is unchanged."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")
