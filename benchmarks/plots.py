"""Writers for benchmarks.fps: the markdown report, the JSON, the PNG plots and the roofline files (all atomic).

Why separate: the tables and plots are pure functions of the results dict, so they are tested on a fake run without
measuring anything.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import roofline
from runtime.stats import CV_WARN


# --------------------------------------------------------------------------- atomic files
def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write through ``write(tmp)`` then rename onto ``path`` (readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def _clean(o: Any) -> Any:
    """JSON without NaN/inf (not valid JSON): they become null."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and callable(o.item):
        return _clean(o.item())
    return o


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(_clean(obj), indent=1) + "\n")


# --------------------------------------------------------------------------- markdown
def _f(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _case(r: dict[str, Any]) -> str:
    b = f" B{r['batch']}" if r.get("batch", 1) != 1 else ""
    t = f" {r['task']}" if r.get("task", "seg") != "seg" else ""
    return f"{r['config']}{t} {r['height']}x{r['width']}{b} {r['precision']}"


def _groups(rows: list[dict[str, Any]], measure: str) -> dict[tuple[str, str], dict[tuple[str, int], dict]]:
    out: dict[tuple[str, str], dict[tuple[str, int], dict]] = {}
    for r in rows:
        if r["measure"] == measure:
            out.setdefault((_case(r), r["backend"]), {})[(r["mode"], r["iters"])] = r
    return out


def fps_table(rows: list[dict[str, Any]], measure: str) -> list[str]:
    """Rows case x backend; columns stream k..., frame N (frames per second, images/s when B > 1)."""
    groups = _groups(rows, measure)
    if not groups:
        return ["(no measurements)"]
    order = {"stream": 0, "stream-il": 1}
    cols = sorted({key for g in groups.values() for key in g}, key=lambda t: (order.get(t[0], 2), t[1]))
    head = [f"{ {'stream': 'k', 'stream-il': 'IL K'}.get(m, 'frame N') }={k}" for m, k in cols]
    lines = ["| case | backend | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(cols)]
    for (case, backend), g in groups.items():
        cells = [_f(g[c]["fps"]) if c in g else "-" for c in cols]
        lines.append(f"| {case} | {backend} | " + " | ".join(cells) + " |")
    return lines


def latency_table(rows: list[dict[str, Any]]) -> list[str]:
    """trtexec's numbers for every measurement: throughput, latency percentiles, GPU compute, host overhead, CV."""
    lines = [
        "| case | backend | measure | mode | k | fps | lat mean | median | p90 | p95 | p99 | GPU compute median "
        "| host overhead median | cell ms/iter | CV % |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["summary"]
        lat = s["latency_ms"]
        gpu = s.get("gpu_compute_ms", {})
        host = s.get("host_overhead_ms", {})
        cv = s.get("cv")
        warn = " ⚠" if cv is not None and cv > CV_WARN else ""
        lines.append(
            f"| {_case(r)} | {r['backend']} | {r['measure']} | {r['mode']} | {r['iters']} | {_f(r['fps'])} "
            f"| {_f(lat.get('mean'))} | {_f(lat.get('median'))} | {_f(lat.get('p90'))} | {_f(lat.get('p95'))} "
            f"| {_f(lat.get('p99'))} | {_f(gpu.get('median'), '.3f')} | {_f(host.get('median'), '.3f')} "
            f"| {_f(r.get('cell_ms_per_iter'), '.3f')} | {_f(100 * cv if cv is not None else None, '.1f')}{warn} |"
        )
    return lines


def head_decode_table(rows: list[dict[str, Any]]) -> list[str]:
    """The head's engines and the task's decoding on the device per frame (benchmarks.fps_tables.head_decode_rows)."""
    lines = [
        "| case | backend | measure | mode | k | fps | latency median ms | head median ms | head decode median ms "
        "| decode share of latency |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {_case(r)} | {r['backend']} | {r['measure']} | {r['mode']} | {r['k']} | {_f(r['fps'])} "
            f"| {_f(r['latency_ms'], '.3f')} | {_f(r['head_ms'], '.3f')} | {_f(r['head_decode_ms'], '.3f')} "
            f"| {_f(100 * r['decode_share'], '.1f')} % |"
        )
    return lines


def evaluations_table(rows: list[dict[str, Any]]) -> list[str]:
    """Warm-started rules by cell evaluations per frame (benchmarks.fps_tables.by_evaluations)."""
    if not rows:
        return ["(no measurements)"]
    lines = [
        "| case | backend | rule | K | cell evaluations / frame | fps | cell ms / evaluation |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"stream": "unrolled (UR/SUR)", "stream-il": "StreamDEQ Broyden (IL)"}
    for r in rows:
        lines.append(
            f"| {_case(r)} | {r['backend']} | {names.get(r['mode'], r['mode'])} | {r['k']} | {r['evaluations']} "
            f"| {_f(r['fps'])} | {_f(r.get('ms_per_evaluation'), '.3f')} |"
        )
    return lines


def speedup_table(speedups: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | backend | measure | k | fps stream | fps frame N | speed-up | ideal N/k | of ideal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in speedups:
        lines.append(
            f"| {_case(r)} | {r['backend']} | {r['measure']} | {r['k']} | {_f(r['fps_stream'])} | "
            f"{_f(r['fps_frame'])} (N={r['n']}) | {_f(r['speedup'])}x | {_f(r['ideal'])}x | "
            f"{_f(100 * r['fraction_of_ideal'], '.0f')}% |"
        )
    return lines


def ratio_table(ratios: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| case | backend | measure | mode | k | vs | fps | fps eager | fps ratio | cell iteration speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        lines.append(
            f"| {_case(r)} | {r['backend']} | {r['measure']} | {r['mode']} | {r['k']} | {r['vs']} | {_f(r['fps'])} "
            f"| {_f(r['fps_eager'])} | {_f(r['ratio'])}x | {_f(r.get('cell_iter_ratio'))}x |"
        )
    return lines


def scaling_tables(scaling: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    res, bat = scaling.get("resolution", []), scaling.get("batch", [])
    if res:
        lines += ["Time per frame vs resolution (B=1, device loop):", ""]
        lines += ["| case | backend | k | ms/frame (median) | µs per 1k pixels | fps |", "|---|---|---|---|---|---|"]
        for r in res:
            per = 1e3 * r["ms_per_frame"] / (r["pixels"] / 1e3)
            lines.append(
                f"| {_case(r)} | {r['backend']} | {r['iters']} | {_f(r['ms_per_frame'])} | {_f(per)} | {_f(r['fps'])} |"
            )
        lines.append("")
    if bat:
        base = next((r["fps"] for r in bat if r["batch"] == 1), None)
        lines += ["Throughput vs batched streams B (one batched engine call per frame):", ""]
        lines += ["| case | backend | k | B | images/s | per stream fps | vs B=1 |", "|---|---|---|---|---|---|---|"]
        for r in bat:
            rel = r["fps"] / base if base else math.nan
            lines.append(
                f"| {_case(r)} | {r['backend']} | {r['iters']} | {r['batch']} | {_f(r['fps'])} "
                f"| {_f(r['fps'] / r['batch'])} | {_f(rel)}x |"
            )
    return lines or ["(scaling not measured)"]


def accuracy_lines(results: dict[str, Any]) -> list[str]:
    """The measured (mIoU, FPS) pairs behind the accuracy plot, each with the resolution of each measurement."""
    pts = results.get("accuracy_vs_fps", [])
    missing = results.get("accuracy_without_fps", [])
    if not pts and not missing:
        return []
    lines = ["## Accuracy vs FPS (pairs where both were measured)", ""]
    if pts:
        lines += [
            "| checkpoint | mode | k | mIoU % | accuracy at | source | backend | measure | FPS | FPS at |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in pts:
            lines.append(
                f"| {p['checkpoint']} | {p['mode']} | {p['k']} | {_f(100 * p['miou'], '.1f')} "
                f"| {_hw(p['accuracy_resolution'])} | {p['source']} | {p['backend']} | {p['measure']} "
                f"| {_f(p['fps'])} | {_hw(p['fps_resolution'])} |"
            )
    if missing:
        lines += ["", "No FPS measured for (not plotted): " + "; ".join(missing)]
    return lines + [""]


def acceptance_lines(checks: list[dict[str, Any]], device: str) -> list[str]:
    """The GPU acceptance criteria applied to this run (binding only for small-seg 1024x2048 fp16 on an H100)."""
    if not checks:
        return []
    note = "" if device.startswith("cuda") else " — informational on CPU; the criteria are GPU (H100) criteria"
    lines = [f"## Acceptance checks (small-seg 1024x2048 fp16 on H100 is the binding case{note})", ""]
    lines += ["| case | backend | check | value | limit | result |", "|---|---|---|---|---|---|"]
    for c in checks:
        verdict = c.get("verdict") or {True: "pass", False: "FAIL", None: "-"}[c["pass"]]
        lines.append(f"| {c['case']} | {c['backend']} | {c['check']} | {_f(c['value'])} | {c['limit']} | {verdict} |")
    return lines + [""]


def stamp_lines(st: dict[str, Any]) -> list[str]:
    env = st.get("environment", {})
    keys = (
        "cpu",
        "cpu_count",
        "load_average",
        "gpu",
        "compute_capability",
        "driver",
        "cuda_runtime",
        "cudnn",
        "torch",
        "torch_threads",
        "onnxruntime",
        "onnxruntime_providers",
        "onnx",
        "tensorrt",
        "python",
    )
    lines = [
        f"- command: `{st['command']}`",
        f"- date: {st['date']}",
        f"- machine: {st['machine']}",
        f"- device: {st.get('device')}, CPU threads {st.get('threads') or 'library default'}"
        + (f" — **{st['note']}**" if st.get("note") else ""),
        "- environment: " + ", ".join(f"{k} {env[k]}" for k in keys if env.get(k) is not None),
    ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    st = results["stamp"]
    label = "CPU, shared machine" if st.get("device", "cpu") == "cpu" else st.get("environment", {}).get("gpu", "")
    lines = [f"# FPS vs iterations per frame ({label}{', quick' if st.get('quick') else ''})", ""]
    lines += stamp_lines(st)
    if results.get("partial"):
        lines.append("- **partial**: written after each measured backend; the run had not finished")
    lines += [f"- weights: {results.get('weights', {})}; total benchmark wall time {results.get('wall_s')} s", ""]
    lines += ["## Device-only loop (injection + k iterations + head, frame on the device), frames/s", ""]
    lines += fps_table(results["rows"], "device") + [""]
    lines += ["## End to end (decode -> class map on the host, through the runtime Pipeline), frames/s", ""]
    lines += fps_table(results["rows"], "e2e") + [""]
    if results.get("head_decode"):
        lines += ["## Head and its decoding on the device (pose and det bundles), per frame", ""]
        lines += [
            "Both are inside the frame times above. head: the task's head engines (det: the RPN/FPN and the box "
            "engine); head decode: the decoding on the device (pose: heatmap peaks; det: proposals, RoIAlign, "
            "per-class NMS), medians over the timed frames.",
            "",
        ]
        lines += head_decode_table(results["head_decode"]) + [""]
    lines += ["## Cost in cell evaluations: plain unrolling vs StreamDEQ's Broyden rule (device loop)", ""]
    lines += [
        "A Broyden iteration evaluates the cell once, plus once per frame for the start's residual: IL K costs "
        "K + 1 evaluations. Rows ordered by evaluations per frame.",
        "",
    ]
    lines += evaluations_table(results.get("evaluations", [])) + [""]
    lines += ["## Streaming speed-up over per-frame N vs the ideal N/k", ""]
    lines += speedup_table(results.get("speedups", [])) + [""]
    lines += ["## Backends vs PyTorch eager (same k, same measure)", ""]
    lines += ratio_table(results.get("backend_ratios", [])) + [""]
    lines += ["## Roofline of one cell iteration (cell ms/iter from the frame-N device loop)", ""]
    lines += [
        "bytes min = weights + z,x read + f written (compulsory: a lower bound); unfused = every op reads its "
        "inputs and writes its outputs; bound = max(FLOPs/peak FLOP/s, bytes min/peak GB/s). measured/bound < 1 is "
        "faster than the peak allows: flagged **wrong peak**, never a pass.",
        "",
    ]
    lines += roofline.markdown(results.get("roofline", []), results.get("warp_roofline", [])).splitlines() + [""]
    lines += ["## Scaling", ""] + scaling_tables(results.get("scaling", {})) + [""]
    lines += accuracy_lines(results)
    lines += acceptance_lines(results.get("acceptance", []), st.get("device", "cpu"))
    lines += ["## Statistics (trtexec style; ⚠ = coefficient of variation above 2.5 %)", ""]
    lines += latency_table(results["rows"]) + [""]
    if results.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {s['backend']} {s['case']}: {s['reason']}" for s in results["skipped"]]
        lines.append("")
    cvs = [r["summary"].get("cv") or 0.0 for r in results["rows"]]
    noisy = [c for c in cvs if c > CV_WARN]
    if noisy:
        lines += [
            "## Warnings",
            "",
            f"- [W] {len(noisy)} of {len(cvs)} measurements have a coefficient of variation above "
            f"{100 * CV_WARN:g}% (max {100 * max(noisy):.1f}%): timings are unstable (locking GPU clocks or an idle "
            "machine may improve stability); see the ⚠ rows above",
            "",
        ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots
def pyplot() -> Any | None:
    """matplotlib.pyplot on the Agg backend, or None (with one warning line) where matplotlib is
    not installed: the tables and JSON matter more than the pictures, e.g. on a GPU machine that
    cannot install packages."""
    try:
        import matplotlib
    except ImportError:
        print("warning: matplotlib is not installed: PNG plots skipped", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fps(results: dict[str, Any], path: Path) -> Path | None:
    """FPS vs k per backend (solid: device loop, dashed: end to end; dotted horizontal: frame N), one panel per case,
    plus the scaling panels."""
    plt = pyplot()
    if plt is None:
        return None
    rows = results["rows"]
    cases = list(dict.fromkeys(_case(r) for r in rows)) or ["(none)"]
    scaling = results.get("scaling", {})
    extra = [k for k in ("resolution", "batch") if scaling.get(k)]
    n = len(cases) + len(extra)
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    colors = {"eager": "C0", "aoti": "C1", "onnx": "C2", "tensorrt": "C3"}
    for ax, case in zip(axes[0], cases):
        for measure, style in (("device", "-o"), ("e2e", "--s")):
            for backend in dict.fromkeys(r["backend"] for r in rows):
                pts = sorted(
                    (r["iters"], r["fps"])
                    for r in rows
                    if _case(r) == case
                    and r["backend"] == backend
                    and r["measure"] == measure
                    and r["mode"] == "stream"
                )
                if pts:
                    ax.plot(*zip(*pts), style, color=colors.get(backend), label=f"{backend} {measure}", ms=4)
                base = next(
                    (
                        r
                        for r in rows
                        if _case(r) == case
                        and r["backend"] == backend
                        and r["measure"] == measure
                        and r["mode"] == "frame"
                    ),
                    None,
                )
                if base is not None:
                    ax.axhline(base["fps"], color=colors.get(backend), ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="iterations per frame k (stream)", ylabel="frames/s", title=case)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, title="dotted: frame N", title_fontsize=7)
    for ax, kind in zip(axes[0][len(cases) :], extra):
        pts = scaling[kind]
        if kind == "resolution":
            ax.plot([r["pixels"] / 1e6 for r in pts], [r["ms_per_frame"] for r in pts], "-o")
            ax.set(xlabel="megapixels", ylabel="ms per frame (median)", xscale="log", yscale="log")
        else:
            ax.plot([r["batch"] for r in pts], [r["fps"] for r in pts], "-o")
            ax.set(xlabel="batched streams B", ylabel="images/s", xticks=[r["batch"] for r in pts])
            ax.set_ylim(bottom=0)
        ax.set_title(f"scaling: {kind} ({pts[0]['backend']}, k={pts[0]['iters']})")
        ax.grid(alpha=0.3, which="both")
    st = results["stamp"]
    fig.suptitle(f"{st['command']}  |  {st['date']}  |  {st['machine']}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    atomic_write(path, lambda p: fig.savefig(p, dpi=90, format="png"))
    plt.close(fig)
    return path


BACKEND_PREFERENCE = ("tensorrt", "aoti", "onnx", "eager")  # the fastest kind of engine first


def accuracy_plot_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The joined (mIoU, FPS) points one plot shows: the device loop of the fastest kind of engine measured, at one
    FPS resolution (the accuracy run's when it was measured there, else the first one). Only measured pairs come in
    (benchmarks.fps_tables.join_accuracy_fps), so every plotted point has both measurements behind it."""
    pts = [p for p in points if p["measure"] == "device"]
    have = {p["backend"] for p in pts}
    backend = next((b for b in BACKEND_PREFERENCE if b in have), None)
    pts = [p for p in pts if p["backend"] == backend]
    if not pts:
        return []
    same = [p for p in pts if p["fps_resolution"] == p["accuracy_resolution"]]
    res = (same or pts)[0]["fps_resolution"]
    return [p for p in pts if p["fps_resolution"] == res]


def _hw(hw: list[int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def accuracy_labels(pts: list[dict[str, Any]]) -> dict[str, str]:
    """Title and axis labels naming the resolution (and source) each axis was measured at."""
    p = pts[0]
    acc_res = ", ".join(dict.fromkeys(_hw(q["accuracy_resolution"]) for q in pts))
    sources = ", ".join(dict.fromkeys(q["source"] for q in pts))
    fps_res = _hw(p["fps_resolution"])
    differ = " (different resolutions: FPS would be lower at the accuracy's)" if acc_res != fps_res else ""
    return {
        "title": f"accuracy at {acc_res} vs FPS at {fps_res}{differ}",
        "xlabel": f"frames/s at {fps_res} ({p['backend']} device loop, {p['precision']}, this machine)",
        "ylabel": f"mIoU % at {acc_res} ({sources})",
    }


def plot_accuracy(results: dict[str, Any], path: Path) -> Path | None:
    """mIoU vs FPS: one curve per (checkpoint, mode), points labelled by k, only where both were measured (stream k
    at the FPS of stream k, per-frame k only at the frame-N FPS); accuracy rows without an FPS are listed under the
    plot, not placed at another mode's FPS. The axis labels give each measurement's resolution."""
    pts = accuracy_plot_points(results.get("accuracy_vs_fps", []))
    if not pts:
        return None
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for key in dict.fromkeys((p["checkpoint"], p["mode"]) for p in pts):
        sel = sorted((p for p in pts if (p["checkpoint"], p["mode"]) == key), key=lambda p: p["k"])
        x, y = [p["fps"] for p in sel], [100 * p["miou"] for p in sel]
        ax.plot(x, y, "-o" if key[1] == "stream" else "s", ms=4, label=f"{key[0]}: {key[1]}")
        for p in sel:
            xy = (p["fps"], 100 * p["miou"])
            ax.annotate(f"k={p['k']}", xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", **accuracy_labels(pts))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower left")
    missing = results.get("accuracy_without_fps", [])
    if missing:
        note = "not plotted, no FPS measured for: " + "; ".join(missing)
        fig.text(0.01, 0.01, note, fontsize=6, wrap=True, va="bottom")
    st = results["stamp"]
    fig.suptitle(f"{st['command']}  |  {st['date']}  |  {st['machine']}", fontsize=6)
    fig.tight_layout(rect=(0, 0.1 if missing else 0, 1, 0.94))
    atomic_write(path, lambda p: fig.savefig(p, dpi=90, format="png"))
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- all outputs
def output_stem(results: dict[str, Any]) -> str:
    st = results["stamp"]
    return st.get("machine_tag", "cpu") + ("_quick" if st.get("quick") else "") + st.get("stem_suffix", "")


def write_outputs(results: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """fps_<tag>.{md,json,png} (+ _accuracy.png) and roofline_<tag>.{md,json}; returns the paths and the md text."""
    out_dir = Path(out_dir)
    stem = output_stem(results)
    md = markdown(results)
    paths: dict[str, Any] = {
        "md": write_text(out_dir / f"fps_{stem}.md", md + "\n"),
        "json": write_json(out_dir / f"fps_{stem}.json", results),
        "png": plot_fps(results, out_dir / f"fps_{stem}.png"),
    }
    acc = plot_accuracy(results, out_dir / f"fps_{stem}_accuracy.png")
    if acc is not None:
        paths["accuracy_png"] = acc
    roof = {"stamp": results["stamp"], "cell": results.get("roofline", []), "warp": results.get("warp_roofline", [])}
    st = results["stamp"]
    roof_md = "\n".join(
        [f"# Roofline of one DEQ cell iteration ({st.get('device')})", "", *stamp_lines(st), ""]
        + roofline.markdown(roof["cell"], roof["warp"]).splitlines()
    )
    paths["roofline_md"] = write_text(out_dir / f"roofline_{stem}.md", roof_md + "\n")
    paths["roofline_json"] = write_json(out_dir / f"roofline_{stem}.json", roof)
    paths["md_text"] = md
    return paths
