"""Sphinx configuration of the deqstream docs (`make docs`: warnings are errors).

Pages are Markdown (MyST). The command-line reference is generated at build time from the commands' own argparse
parsers by the ``cli-help`` directive (docs/_ext/cli_help.py), so it can never drift from ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS / "_ext"), str(DOCS.parent)]  # our extension, and the packages it documents

project = "deqstream"
author = "deqstream contributors"
copyright = "2026, deqstream contributors"  # noqa: A001 - the name Sphinx reads
extensions = ["myst_parser", "cli_help"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = "deqstream"
html_static_path: list[str] = []
# Links to files outside docs/ (results files, ARCHITECTURE.md) are written as code spans naming the path.
nitpicky = True
# ARCHITECTURE.md (included by architecture.md) shows the manifest as annotated JSON ("..." and "(optional)"), which
# Pygments cannot lex strictly; it falls back to relaxed highlighting, which is what that block wants.
suppress_warnings = ["misc.highlighting_failure"]
