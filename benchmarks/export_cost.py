"""Time and peak memory of exporting the published MDEQ configs at their real sizes.

Each case runs ``python -m export`` in its own child process (random weights unless a checkpoint is
given: the cost does not depend on the values), so the peak resident memory is that child's alone
(``os.wait4`` returns its own rusage); the wall time includes the parity gate against PyTorch.

    python -m benchmarks.export_cost                       # small-seg/xl-seg 1024x2048, small/xl-cls 224x224
    python -m benchmarks.export_cost --cases small-seg:256x512 --out /tmp/cost
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.plots import write_text

CASES = ("small-seg:1024x2048", "small-cls:224x224", "xl-cls:224x224", "xl-seg:1024x2048")


def run_child(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> tuple[int, float, float]:
    """(exit status, wall s, peak RSS MiB) of one child process; killed at ``timeout_s``."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = t0 + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024


def measure(case: str, threads: int, checkpoint: str | None, timeout_s: float) -> dict[str, Any]:
    config, _, size = case.partition(":")
    height, width = (int(v) for v in size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix=f"export-{config}-") as tmp:
        out = Path(tmp) / "engines"
        src = ["--checkpoint", checkpoint] if checkpoint else ["--random-init"]
        cmd = [sys.executable, "-m", "export", "--config", config, *src, "--height", str(height),
               "--width", str(width), "--formats", "onnx", "--device", "cpu", "--out", str(out)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        rc, wall, peak = run_child(cmd, env, Path(tmp) / "log.txt", timeout_s)
        tail = (Path(tmp) / "log.txt").read_text().strip().splitlines()[-1:]
        man = json.loads((out / "manifest.json").read_text()) if rc == 0 else {}
        engine_mib = sum(p.stat().st_size for p in out.glob("*.onnx")) / 2**20 if rc == 0 else 0.0
    parity = {n: e["parity"].get("onnx", {}) for n, e in man.get("engines", {}).items()}
    return {"config": config, "height": height, "width": width, "threads": threads, "returncode": rc,
            "wall_s": round(wall, 1), "peak_rss_mib": round(peak), "engine_mib": round(engine_mib, 1),
            "parity_onnx": parity, "log_tail": tail if rc else []}  # fmt: skip


def markdown(rows: list[dict[str, Any]], stamp: dict[str, Any]) -> str:
    lines = [
        "# Export cost of the published configs (ONNX, parity gate included)",
        "",
        f"- command: `{stamp['command']}`",
        f"- machine: {stamp['machine']}; date {stamp['date']}; random weights unless a checkpoint is named",
        "- load: the machine's 1-minute load average when the case started (2 cores: above 2 means the export "
        "shared the CPU and its time is inflated)",
        "",
        "| config | size | threads | export s | peak RSS MiB | engines MiB | cell parity max rel | exit | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rel = r["parity_onnx"].get("deq_cell", {}).get("max_rel")
        rel_s = "-" if rel is None else f"{rel:.2g}"
        lines.append(
            f"| {r['config']} | {r['height']}x{r['width']} | {r['threads']} | {r['wall_s']} | {r['peak_rss_mib']} | "
            f"{r['engine_mib']} | {rel_s} | {r['returncode']} | {r.get('load_before', '-')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from export.train import machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.export_cost", description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=list(CASES), help="config:HxW (default: the published models)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint for every case (default: random weights)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per case before it is killed")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/export_cost"), help="writes OUT.json, OUT.md")
    a = p.parse_args(argv)
    try:
        for case in a.cases:
            config, sep, size = case.partition(":")
            if not sep or len(size.lower().split("x")) != 2:
                raise ValueError(f"--cases: expected config:HxW, got {case!r}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = argv if argv is not None else sys.argv[1:]
    stamp = {"command": "python -m benchmarks.export_cost " + " ".join(shlex.quote(s) for s in args),
             "machine": machine(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    rows = []
    for case in a.cases:
        load = os.getloadavg()[0]
        rows.append({**measure(case, a.threads, a.checkpoint, a.timeout), "load_before": round(load, 1)})
        print(json.dumps(rows[-1]), flush=True)
    write_text(a.out.with_suffix(".json"), json.dumps({"stamp": stamp, "rows": rows}, indent=1) + "\n")
    write_text(a.out.with_suffix(".md"), markdown(rows, stamp))
    print(f"wrote {a.out.with_suffix('.md')}, {a.out.with_suffix('.json')}")
    return 0 if all(r["returncode"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
