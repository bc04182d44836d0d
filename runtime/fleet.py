"""``python -m runtime.fleet --engine engines/deq_cell.onnx a.mp4 b.mp4 --workers 2``: many streams on a Ray cluster.

The stream is the unit of work: each worker (a Ray actor owning one device, or ``--gpus-per-worker``
of one) loads the bundle once and runs the streaming loop of ``runtime.run`` over the streams the
driver hands it, ``--streams-per-worker`` of them batched in one engine call. Frames are decoded
where they are processed; each stream gets its own folder with the files ``runtime.run`` writes.
Without ``--address`` an embedded local cluster is started and shut down; with it the fleet joins a
running one (``ray start --head`` / ``ray start --address``), whose nodes must all see the engines,
the sources and ``--out`` under the same paths.

Exit status: 0 every stream complete (worker restarts included: one warning line each), 2 unusable
options/engine/output or Ray missing (nothing ran), 3 some streams failed or decoded only partly
(named with their reason in the summary), 130 stopped by SIGINT/SIGTERM (outputs complete for what
was processed), 1 internal error.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

from runtime.errors import OneLineParser, SourceError
from runtime.run import _validate, add_run_options, config_from_args, guarded

INSTALL_HINT = "runtime.fleet needs Ray: pip install 'deqstream[fleet]'"
KILL_ENV = "DEQSTREAM_FLEET_KILL"  # test hook "W:N": worker W's first actor kills itself after N records

EXAMPLES = """examples:
  python -m runtime.fleet --engine engines/deq_cell.onnx cam*.mp4 --workers 2 --out out/fleet
  python -m runtime.fleet --engine engines/deq_cell.onnx @cams.txt --mode stream --iters 2
  python -m runtime.fleet --engine engines_b4/deq_cell.plan @cams.txt --streams-per-worker 4 --gpus-per-worker 0.5
  ray start --head --port 6379            (then on the other machines: ray start --address <head>:6379)
  python -m runtime.fleet --address <head>:6379 --engine /shared/engines/deq_cell.plan @/shared/cams.txt
outputs (in --out): stream<i>/ per input (overlay.mp4, maps/ or maps.npz, frames.jsonl, summary.json;
  det bundles: detections.json, no maps), summary.json and summary.txt for the fleet
exit status: 0 all complete, 2 bad options/engine/output or no Ray, 3 some streams failed (see summary),
  130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m runtime.fleet",
        description="Run an exported MDEQ engine bundle over many video streams on a Ray cluster (embedded "
        "local one by default): one worker per GPU, streams balanced by pixel work, a dead worker's streams "
        "resumed elsewhere without losing or repeating a frame record. Options as runtime.run.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(p, streams=False, video=True)
    f = p.add_argument_group("fleet")
    f.add_argument("--workers", type=int, default=None, help="worker actors (default: one per GPU, else 1)")
    f.add_argument(
        "--streams-per-worker",
        type=int,
        default=None,
        help="streams batched in one engine call inside a worker (default and required: the bundle's batch; "
        "export with --batch B for B)",
    )
    f.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPU share of each worker, e.g. 0.5 puts two workers on one GPU (default: 1 where the cluster has GPUs)",
    )
    f.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per worker (default 1)")
    f.add_argument(
        "--address", default=None, help="join this Ray cluster (host:port or 'auto'); default: embedded local cluster"
    )
    f.add_argument(
        "--max-restarts", type=int, default=3, help="replacements per worker position after deaths (default 3)"
    )
    return p


def expand_sources(items: list[str]) -> list[str]:
    """Inputs as given, ``@file`` replaced by its lines (blank lines and ``#`` comments skipped)."""
    out: list[str] = []
    for item in items:
        if not item.startswith("@"):
            out.append(item)
            continue
        try:
            lines = Path(item[1:]).read_text().splitlines()
        except OSError as e:
            raise SourceError(f"{item[1:]}: cannot read the source list ({e.strerror or e})") from None
        out += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not out:
        raise SourceError("no sources given (the list files are empty)")
    return out


def _check(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    _validate(p, a)
    for name in ("workers", "streams_per_worker"):
        v = getattr(a, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.gpus_per_worker is not None and a.gpus_per_worker < 0:
        p.error("--gpus-per-worker must be >= 0")
    if not a.cpus_per_worker > 0:
        p.error("--cpus-per-worker must be > 0")
    if a.max_restarts < 0:
        p.error("--max-restarts must be >= 0")
    if a.mode == "mv-interp" and a.streams_per_worker not in (None, 1):
        p.error("--mode mv-interp takes one stream per engine call (--streams-per-worker 1)")


def _kill_hook() -> tuple[int, int] | None:
    spec = os.environ.get(KILL_ENV, "")
    if not spec:
        return None
    w, n = spec.split(":")
    return int(w), int(n)


def token_auth_like_ray_start() -> None:
    """``ray start`` turns token authentication on when a token exists (~/.ray/auth_token), but ``ray.init``
    with an explicit address does not: send the token then too. Must run before ray is imported."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def _absolute(spec: str) -> str:
    """Local paths made absolute (a worker's working directory is not ours); URLs and devices as given."""
    return str(Path(spec).resolve()) if Path(spec).exists() else spec


def run_fleet(args: argparse.Namespace, sources: list[str]) -> dict[str, Any]:
    """Everything after option parsing: bundle check, cluster, workers, streams, summary files."""
    from runtime.bundle import open_bundle
    from runtime.errors import EngineError
    from runtime.fleet_report import build_summary, format_fleet
    from runtime.fleet_worker import StreamTask
    from runtime.writers import atomic_write_bytes, atomic_write_json, prepare_out_dir

    t0 = time.perf_counter()
    if args.address:
        token_auth_like_ray_start()
    bundle = open_bundle(args.engine, check_hash=not args.no_hash)
    spw = args.streams_per_worker or bundle.batch
    if spw != bundle.batch:
        raise EngineError(
            f"--streams-per-worker {spw}: the engines take batch {bundle.batch} "
            f"(export with --batch {spw} for {spw} streams per engine call)"
        )
    args.engine = Path(args.engine).resolve()  # workers of a cluster do not start in our directory
    cfg = config_from_args(args, [])
    if args.threads == 0 and (args.device == "cpu" or (args.device == "auto" and not args.gpus_per_worker)):
        cfg.threads = max(1, int(args.cpus_per_worker))  # workers share the CPU: no oversubscription
    out = prepare_out_dir(Path(args.out).resolve())
    tasks = [StreamTask(i, _absolute(src), str(out / f"stream{i}")) for i, src in enumerate(sources)]
    from runtime.fleet_driver import Fleet  # imports ray (after RAY_AUTH_MODE is settled)

    fleet = Fleet(
        cfg,
        tasks,
        args.workers,
        args.gpus_per_worker,
        args.cpus_per_worker,
        args.address,
        args.max_restarts,
        batch=spw,
        progress=not args.no_progress,
        kill_hook=_kill_hook(),
    )
    try:
        fleet.start()
        fleet.launch()
        startup = time.perf_counter() - t0
        wall = fleet.run()
    finally:
        fleet.shutdown()
    facts = {
        "engine": str(args.engine),
        "mode": cfg.mode,
        "iters": cfg.iters,
        "solver": cfg.spec.solver,
        "solve": cfg.spec.describe(),
        "streams_per_worker": spw,
        "gpus_per_worker": fleet.gpus_per_worker,
        "cpus_per_worker": args.cpus_per_worker,
        "address": args.address or "embedded",
        "threads": cfg.threads,
    }
    summary = build_summary(fleet.results, len(tasks), fleet.slots, wall, startup, fleet.warnings, facts)
    text = format_fleet(summary)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "summary.txt", (text + "\n").encode())
    summary["text"] = text
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    if importlib.util.find_spec("ray") is None:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    failed, summary = guarded(lambda: run_fleet(args, expand_sources(list(args.inputs))))
    if failed is not None:
        return failed
    print(summary["text"])
    print(f"outputs: {Path(args.out).resolve()} (stream<i>/ per input, summary.json, summary.txt)")
    for s in summary["streams"]:
        if s["status"] != "complete":
            print(f"error: stream{s['index']} {s['source']}: {s['status']}: {s['reason']}", file=sys.stderr)
    return summary["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
