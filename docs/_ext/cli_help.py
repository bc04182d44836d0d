"""``cli-help`` directive: a command's ``--help`` text, generated at build time from its own argparse parser.

    ```{cli-help} runtime.run
    ```

runs ``runtime.run``'s ``main()`` with ``--help`` (at a fixed width of 100 columns, the width the test compares
with) and puts what it prints in a literal block: the reference pages are never copied by hand and never drift.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
from collections.abc import Iterator

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

COLUMNS = "100"  # argparse wraps at $COLUMNS - 2; fixed, so the pages do not depend on the terminal


@contextlib.contextmanager
def _help_environment(module: str) -> Iterator[io.StringIO]:
    """sys.argv as ``python -m module --help`` sets it, $COLUMNS fixed, stdout captured; all restored after."""
    saved = sys.argv, os.environ.get("COLUMNS")
    sys.argv, os.environ["COLUMNS"] = [module, "--help"], COLUMNS
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            yield buf
    finally:
        sys.argv = saved[0]
        if saved[1] is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved[1]


def help_text(module: str) -> str:
    """What ``COLUMNS=100 python -m <module> --help`` prints: the module's ``main()`` run with ``--help``."""
    mod = importlib.import_module(module if module != "export" else "export.__main__")
    with _help_environment(module) as buf:
        try:
            mod.main()
        except SystemExit as e:
            if e.code not in (0, None):
                raise RuntimeError(f"{module} --help exited with {e.code}") from None
        else:
            raise RuntimeError(f"{module}.main() returned without printing --help")
    return buf.getvalue()


class CliHelp(SphinxDirective):
    """The directive: one argument, the module that ``python -m`` runs."""

    required_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        module = self.arguments[0]
        text = help_text(module)
        spec = importlib.util.find_spec(module if module != "export" else "export.__main__")
        if spec is not None and spec.origin:
            self.env.note_dependency(spec.origin)  # rebuild the page when the parser changes
        block = nodes.literal_block(text, text)
        block["language"] = "none"
        return [block]


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("cli-help", CliHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
