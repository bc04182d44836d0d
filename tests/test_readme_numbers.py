"""Every results number in the README and in the docs comes from the committed file it cites.

A block (paragraph, bullet or table) that quotes a decimal number must name the file it comes from
(`benchmarks/results/...`, an archived trial file `archive/...`, or a training log `checkpoints/*.jsonl`); a table may
take its citation from the paragraph just above it. Each decimal number of the block must occur in one of the files it
cites. Integers (clip counts, resolutions, k) and text inside `code spans` and fenced code blocks (commands, options,
versions) are not checked. In the README only the `## ...Results...` sections are checked (the rest is usage); in
docs/ every block of every page is, so a measured number cannot hide on a usage page."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITE = re.compile(r"(?:(?:benchmarks/results|archive)/[\w./-]+\.(?:md|json)|checkpoints/[\w.-]+\.jsonl)")
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.]*\d)")
CODE = re.compile(r"`[^`]*`")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)


def results_sections(text: str) -> list[str]:
    """The bodies of the `## ...Results...` sections."""
    parts = re.split(r"^## ", text, flags=re.M)
    return [p for p in parts[1:] if "results" in p.splitlines()[0].lower()]


def blocks(section: str) -> list[str]:
    return [b for b in re.split(r"\n\s*\n", FENCE.sub("", section)) if b.strip()]


def numbers(text: str) -> set[str]:
    return set(NUMBER.findall(CODE.sub(" ", text)))


def file_numbers(path: Path) -> set[str]:
    return set(re.findall(r"\d+\.\d+", path.read_text()))


def untraced_blocks(section: str, root: Path = ROOT) -> list[str]:
    """One line per number of ``section`` that no cited file holds (empty when all are traceable)."""
    problems: list[str] = []
    previous: list[str] = []
    for block in blocks(section):
        cited = CITE.findall(block) or (previous if block.lstrip().startswith("|") else [])
        nums = numbers(block)
        if nums and not cited:
            problems.append(f"cites no results file: {block.strip()[:80]!r}")
        elif nums:
            missing = [p for p in cited if not (root / p).is_file()]
            problems += [f"cited file does not exist: {p}" for p in missing]
            have = set().union(*(file_numbers(root / p) for p in cited if (root / p).is_file()))
            problems += [f"{n} not in {', '.join(cited)}" for n in sorted(nums - have)]
        previous = cited or previous
    return problems


def untraced(readme: str, root: Path = ROOT) -> list[str]:
    """The README's check: its results sections only."""
    return [p for section in results_sections(readme) for p in untraced_blocks(section, root)]


def test_every_readme_results_number_is_in_the_file_it_cites() -> None:
    problems = untraced((ROOT / "README.md").read_text())
    assert not problems, "\n".join(problems)


def test_every_docs_number_is_in_the_file_it_cites() -> None:
    pages = sorted((ROOT / "docs").rglob("*.md"))
    assert len(pages) >= 10, pages
    problems = [f"{p.relative_to(ROOT)}: {line}" for p in pages for line in untraced_blocks(p.read_text())]
    assert not problems, "\n".join(problems)


def test_the_check_catches_an_untraced_number(tmp_path) -> None:
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "a.md").write_text("| stream | 84.0 | 52.28 |\n")
    good = "## Results\n\nStream k=2 gives 84.0 % at 52.28 FPS (`benchmarks/results/a.md`).\n"
    assert untraced(good, tmp_path) == []
    assert untraced(good.replace("84.0", "86.5"), tmp_path) == ["86.5 not in benchmarks/results/a.md"]
    assert untraced("## Results\n\nIt is 6.5x faster.\n", tmp_path)[0].startswith("cites no results file")
    table = "## Results\n\nFrom `benchmarks/results/a.md`:\n\n| mode | mIoU |\n|---|---|\n| stream | 84.0 |\n"
    assert untraced(table, tmp_path) == []
    assert untraced("## Results\n\nSee `benchmarks/results/b.md`: 1.5.\n", tmp_path)[0].startswith("cited file does")
    assert untraced("## Usage\n\nNot a results section: 9.9.\n", tmp_path) == []


def test_docs_pages_are_checked_everywhere_but_in_code(tmp_path) -> None:
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "t.md").write_text("radius 0.982\n")
    assert untraced_blocks("# Usage\n\nNot cited: 9.9.\n", tmp_path)[0].startswith("cites no results file")
    assert untraced_blocks("# Usage\n\nOption `--tol 0.01`, torch `2.11`.\n", tmp_path) == []
    fenced = "# Usage\n\n```bash\npython -m x --key-tols 0.05\n\npython -m y 0.02\n```\n"
    assert untraced_blocks(fenced, tmp_path) == []
    assert untraced_blocks("# T\n\nRadius 0.982 (`archive/t.md`).\n", tmp_path) == []
    assert untraced_blocks("# T\n\nRadius 0.983 (`archive/t.md`).\n", tmp_path) == ["0.983 not in archive/t.md"]
