"""Write an engine bundle: injection, deq_cell and head graphs plus ``manifest.json``.

Every engine file is checked against PyTorch on random inputs before it is accepted,
because a silently wrong engine in a fixed-point loop produces plausible-looking garbage.
Everything is written into a temporary directory next to ``out_dir`` and renamed into
place at the end, so a failed export never leaves a half-written bundle behind.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from export.manifest import (
    FORMAT,
    MANIFEST_NAME,
    collect_versions,
    default_mode,
    dtype_name,
    sha256_file,
    tensor_spec,
    utc_now,
    write_manifest,
)
from export.mdeq import ClassMapHead, MDEQSegNet, PoseHead, check_resolution
from export.onnx_export import ParityError, check_tolerance, compare, export_onnx, merge_parity, run_onnx
from export.precision import TORCH_DTYPES, check_precision, to_half, to_half_injection
from export.tf32 import exact_fp32

FORMATS = ("onnx", "pt2", "plan")
HEADS = ("seg", "cls", "pose")  # seg: class map (seg configs); cls: 1000 logits (cls configs)
# Relative tolerance (to max|ref|) of an engine vs PyTorch in the same precision; for the
# uint8 class map, the largest allowed fraction of differing pixels.
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2}
CLASSMAP_TOLERANCE = 1e-3
TIMING_CACHE = "trt_timing.cache"  # kept inside the bundle and carried over to its next export
PARITY_ITERS = 2  # cell iterations from z = 0 that make the parity inputs look like real states


@dataclass
class EngineGraph:
    """One graph to export: the module, sample inputs to trace, other inputs to check."""

    name: str
    module: nn.Module
    trace_inputs: list[Tensor]
    check_inputs: list[Tensor]
    input_names: list[str]
    output_names: list[str]
    notes: list[str] = field(default_factory=list)


def _as_list(out: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [out] if isinstance(out, Tensor) else list(out)


def _specs(names: Sequence[str], tensors: Sequence[Tensor]) -> list[dict[str, Any]]:
    return [tensor_spec(n, t.shape, dtype_name(t.dtype)) for n, t in zip(names, tensors)]


def _sample_inputs(
    model: MDEQSegNet, batch: int, height: int, width: int, device: str, seed: int
) -> tuple[Tensor, list[Tensor], Tensor]:
    """A random uint8 frame and the (z, x) a couple of cell iterations give for it."""
    gen = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=gen).to(device)
    with torch.no_grad():
        z, x = model.solve(frame, iters=PARITY_ITERS)
    # Dense NCHW, as the runtime's buffers are: eager convs keep the channels-last strides of
    # the permuted frame, and AOTInductor would bake those strides into the package.
    return frame, [t.contiguous() for t in z], x.contiguous()


def _pose_module(model: MDEQSegNet, device: str) -> tuple[nn.Module, list[str]]:
    """The model's own pose head when it has one, else a seeded random one (and say so)."""
    head = getattr(model, "pose_head", None)
    if isinstance(head, nn.Module):  # PoseHead, or a checkpoint's KeypointHead (export.pose_head)
        return head, []
    rng = torch.random.get_rng_state()
    torch.manual_seed(0)
    head = PoseHead(model.cfg).to(device).eval()
    torch.random.set_rng_state(rng)
    return head, ["pose head is randomly initialised (the model has no trained pose_head)"]


def build_graphs(
    model: MDEQSegNet, height: int, width: int, batch: int, precision: str, device: str, heads: Sequence[str]
) -> list[EngineGraph]:
    """The engine graphs in export order, in the requested precision and on ``device``."""
    dtype = TORCH_DTYPES[precision]
    n = model.cfg.num_scales
    z_names, f_names = [f"z{i}" for i in range(n)], [f"f{i}" for i in range(n)]
    frame_t, z_t, x_t = _sample_inputs(model, batch, height, width, device, seed=1)
    frame_c, z_c, x_c = _sample_inputs(model, batch, height, width, device, seed=2)
    z_t, z_c = [z.to(dtype) for z in z_t], [z.to(dtype) for z in z_c]
    x_t, x_c = x_t.to(dtype), x_c.to(dtype)
    half = precision == "fp16"

    def cast(m: nn.Module) -> nn.Module:
        return to_half(m) if half else m

    injection = to_half_injection(model.injection) if half else model.injection
    graphs = [
        EngineGraph("injection", injection, [frame_t], [frame_c], ["frame"], ["x"]),
        EngineGraph("deq_cell", cast(model.fullstage), [*z_t, x_t], [*z_c, x_c], [*z_names, "x"], f_names),
    ]
    if "seg" in heads:
        head = cast(ClassMapHead(model.head, (height, width)).eval())
        graphs.append(EngineGraph("head_seg", head, z_t, z_c, z_names, ["classes"]))
    if "cls" in heads:  # pooled features -> logits, the checkpoint's own classification head
        graphs.append(EngineGraph("head_cls", cast(model.head), z_t, z_c, z_names, ["logits"]))
    if "pose" in heads:
        pose, notes = _pose_module(model, device)
        graphs.append(EngineGraph("head_pose", cast(pose), z_t, z_c, z_names, ["heatmaps"], notes))
    return graphs


def _random_heads(model: MDEQSegNet, heads: Sequence[str], allowed: bool) -> list[str]:
    """Head engines about to be exported with weights that did not come from the checkpoint;
    ValueError (one line) unless ``allowed``. A model not loaded from a checkpoint (random init,
    built in code) has no ``untrained_heads``: its weights are what the caller asked for."""
    untrained = getattr(model, "untrained_heads", None)
    if untrained is None:
        return []
    names = [f"head_{h}" for h in heads if f"head_{h}" in untrained]
    if "pose" in heads and not isinstance(getattr(model, "pose_head", None), nn.Module):
        names.append("head_pose")
    if names and not allowed:
        raise ValueError(
            f"{', '.join(names)}: weights not in the checkpoint; refusing to export a randomly initialised head "
            "(pass --allow-random-head to export it anyway; the manifest records it)"
        )
    return names


def _tolerance(output: Tensor, precision: str) -> float:
    return CLASSMAP_TOLERANCE if not output.is_floating_point() else TOLERANCE[precision]


def _parity(graph: EngineGraph, kind: str, refs: list[Tensor], outs: Sequence[Any], precision: str) -> dict[str, float]:
    results = [compare(r, o) for r, o in zip(refs, outs)]
    for ref, res in zip(refs, results):
        check_tolerance(graph.name, kind, res, _tolerance(ref, precision))
    return merge_parity(results)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _run_onnx_reference(path: Path, feeds: dict[str, Tensor]) -> list[Any]:
    """ONNX's own reference evaluator (numpy, every standard op and dtype): slow, but it runs
    the fp16 graphs whose kernels ONNX Runtime's CPU provider lacks."""
    from onnx.reference import ReferenceEvaluator

    return list(ReferenceEvaluator(str(path)).run(None, {k: v.detach().cpu().numpy() for k, v in feeds.items()}))


# Backends that can check an ONNX file, in order: the first that runs the graph gives the parity numbers
# (looked up at call time, so tests can make one fail).
ONNX_CHECKERS: tuple[tuple[str, Callable[[Path, dict[str, Tensor]], list[Any]]], ...] = (
    ("onnxruntime-cpu", lambda path, feeds: run_onnx(path, feeds)),
    ("onnx-reference", lambda path, feeds: _run_onnx_reference(path, feeds)),
)


def _export_onnx(
    graph: EngineGraph, tmp: Path, refs: list[Tensor], precision: str, skip_parity: bool = False
) -> tuple[str, dict[str, Any]]:
    """Export and check one ONNX graph. The check never goes silently missing: when no backend
    can run the graph the export stops (ParityError), unless ``skip_parity`` says the user
    accepts an unchecked engine, which the parity entry then records."""
    fname = f"{graph.name}.onnx"
    export_onnx(graph.module, graph.trace_inputs, graph.input_names, graph.output_names, tmp / fname)
    feeds = dict(zip(graph.input_names, graph.check_inputs))
    errors = []
    for backend, runner in ONNX_CHECKERS:
        try:
            outs = runner(tmp / fname, feeds)
        except Exception as e:  # noqa: BLE001 - e.g. ORT CPU lacks an fp16 kernel: try the next backend
            errors.append(f"{backend}: {_first_line(e)}")
            continue
        return fname, {**_parity(graph, "onnx", refs, outs, precision), "backend": backend}
    why = "; ".join(errors)
    if not skip_parity:
        raise ParityError(
            f"{graph.name}.onnx ({precision}) could not be checked: no backend ran it ({why}); "
            "pass --skip-parity to write the bundle unchecked"
        )
    return fname, {"skipped": f"no backend could run this {precision} graph ({why})", "skipped_by_user": True}


def _export_pt2(
    graph: EngineGraph, tmp: Path, refs: list[Tensor], precision: str, device: str
) -> tuple[str, dict[str, Any]]:
    from export.aoti_export import export_pt2, run_pt2

    fname = f"{graph.name}.pt2"
    export_pt2(graph.module, graph.trace_inputs, tmp / fname)
    outs = run_pt2(tmp / fname, graph.check_inputs)
    return fname, _parity(graph, "pt2", refs, outs, precision)


def _export_plan(
    graph: EngineGraph, tmp: Path, refs: list[Tensor], precision: str, onnx_name: str
) -> tuple[str, dict[str, Any]]:
    from export.tensorrt_build import build_plan, run_plan

    fname = f"{graph.name}.plan"
    build_plan(tmp / onnx_name, tmp / fname, precision=precision, timing_cache=tmp / TIMING_CACHE)
    outs = run_plan(tmp / fname, dict(zip(graph.input_names, graph.check_inputs)), graph.output_names)
    return fname, _parity(graph, "plan", refs, outs, precision)


def export_engine(
    graph: EngineGraph,
    tmp: Path,
    formats: Sequence[str],
    precision: str,
    device: str,
    log: Callable[[str], None],
    skip_parity: bool = False,
) -> dict[str, Any]:
    """Export one graph in every requested format into ``tmp``; returns its manifest entry."""
    with torch.no_grad():
        refs = _as_list(graph.module(*graph.check_inputs))
        trace_out = _as_list(graph.module(*graph.trace_inputs))
    entry: dict[str, Any] = {
        "inputs": _specs(graph.input_names, graph.trace_inputs),
        "outputs": _specs(graph.output_names, trace_out),
        "files": {},
        "sha256": {},
        "parity": {},
        "device": {},
        "export_seconds": {},
    }
    kinds = list(formats)
    if "plan" in kinds and "onnx" not in kinds:
        kinds.insert(0, "onnx")  # TensorRT builds from the ONNX file; keep it in the bundle too
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "onnx":
            fname, parity = _export_onnx(graph, tmp, refs, precision, skip_parity)
            entry["device"][kind] = "cpu"
        elif kind == "pt2":
            fname, parity = _export_pt2(graph, tmp, refs, precision, device)
            entry["device"][kind] = device
        else:
            fname, parity = _export_plan(graph, tmp, refs, precision, entry["files"]["onnx"])
            entry["device"][kind] = "cuda"
        dt = time.perf_counter() - t0
        entry["files"][kind] = fname
        entry["sha256"][fname] = sha256_file(tmp / fname)
        entry["parity"][kind] = parity
        entry["export_seconds"][kind] = round(dt, 2)
        log(f"  {graph.name}.{kind}: {dt:.1f} s, parity {_fmt_parity(parity)}")
    if graph.notes:
        entry["notes"] = list(graph.notes)
    return entry


def _fmt_parity(parity: dict[str, Any]) -> str:
    if "skipped" in parity:
        return f"not checked ({parity['skipped']})"
    text = f"max_abs {parity['max_abs']:.2e} max_rel {parity['max_rel']:.2e}"
    text += f" mismatch {parity['mismatch']:.2e}" if "mismatch" in parity else ""
    return text + (f" ({parity['backend']})" if "backend" in parity else "")


def base_manifest(model: MDEQSegNet, height: int, width: int, batch: int, precision: str, command: str) -> dict:
    cfg = model.cfg
    dtype = dtype_name(TORCH_DTYPES[precision])
    state = [tensor_spec(f"z{i}", s, dtype) for i, s in enumerate(model.state_shapes(batch, height, width))]
    return {
        "format": FORMAT,
        "created": utc_now(),
        "command": command,
        "config": cfg.to_dict(),
        "task": cfg.task,
        "height": height,
        "width": width,
        "batch": batch,
        "strides": list(cfg.strides),
        "state": state,
        "normalization": {"input": "uint8 RGB NHWC", "mean": list(cfg.mean), "std": list(cfg.std)},
        "classes": list(cfg.class_names),
        "palette": [list(c) for c in cfg.palette],
        "precision": precision,
        "f_thres": cfg.f_thres,
        "versions": collect_versions(),
        "engines": {},
    }


def _check_args(model: MDEQSegNet, height: int, width: int, batch: int, formats, precision, heads, device) -> None:
    check_resolution(model.cfg, height, width)
    check_precision(precision)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of {', '.join(FORMATS)}, got {', '.join(formats)}")
    bad = [h for h in heads if h not in HEADS]
    if bad:
        raise ValueError(f"heads must be a subset of {', '.join(HEADS)}, got {', '.join(heads)}")
    other = {"seg": "cls", "cls": "seg"}[model.cfg.task]
    if other in heads:  # a seg model has no classification head and vice versa
        cfg = model.cfg
        raise ValueError(f"config {cfg.name!r} ({cfg.task}) has no {other} head; use --heads {cfg.task}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
    if "plan" in formats:
        from export.tensorrt_build import require_tensorrt

        require_tensorrt()
        if not device.startswith("cuda"):
            raise ValueError("plan engines are built and checked on a GPU: pass device='cuda' (--device cuda)")


def _detector_manifest(manifest: dict[str, Any], model: MDEQSegNet, detector: Any, heads: Sequence[str]) -> Any:
    """The manifest's ``detector`` entry (and, as the only head, task ``det`` and the detector's classes); returns
    a copy of the heads to export (the caller's are never moved to another device)."""
    from export.det_graphs import detector_entry

    det = detector.det_cfg
    if tuple(detector.trunk_cfg.channels) != tuple(model.cfg.channels):
        raise ValueError(
            f"detector heads take trunk channels {detector.trunk_cfg.channels}, the model has {model.cfg.channels}"
        )
    manifest["detector"] = detector_entry(model.cfg, det)
    if not heads:  # the runtime runs head_det_rpn, then head_det_box, boxes per frame
        manifest["task"] = "det"
        manifest["classes"] = list(det.class_names) or [f"class{i}" for i in range(det.num_classes)]
        if getattr(det, "palette", ()):  # a one-stage detector's own class colours
            manifest["palette"] = [list(c) for c in det.palette]
    return copy.deepcopy(detector)


def _record_skips(manifest: dict[str, Any]) -> None:
    """Top-level ``parity_skipped``: every engine file written without a parity check (only
    ever non-empty when the user passed --skip-parity)."""
    skipped = [
        f"{name}.{kind}"
        for name, entry in manifest["engines"].items()
        for kind, parity in entry["parity"].items()
        if "skipped" in parity
    ]
    if skipped:
        manifest["parity_skipped"] = skipped


def _install_bundle(tmp: Path, out: Path) -> None:
    """Swap the finished temp directory into place (replacing an older bundle, never
    anything that is not a bundle)."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
            raise ValueError(f"refusing to replace {out}: it exists and is not an engine bundle")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_bundle(
    model: MDEQSegNet,
    out_dir: str | os.PathLike[str],
    height: int,
    width: int,
    batch: int = 1,
    formats: Sequence[str] = ("onnx",),
    precision: str = "fp32",
    device: str = "cpu",
    heads: Sequence[str] | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
    weights: dict[str, Any] | None = None,
    skip_parity: bool = False,
    allow_random_head: bool = False,
    detector: Any = None,
) -> dict[str, Any]:
    """Export ``model`` as a bundle in ``out_dir`` and return the manifest written there.

    ``weights`` (optional) says where the weights came from (checkpoint, training mode and
    steps); it is stored as the manifest's ``weights`` so results made from the engines alone
    can name the model they measured. ``skip_parity`` lets an engine that no backend here can
    run be written unchecked (recorded as ``parity_skipped`` in the manifest); without it such
    an export stops.

    ``heads`` defaults to the config's task head (seg or cls). A head whose weights were not in
    the checkpoint the model came from (``model.untrained_heads``; a pose head the model lacks)
    is refused unless ``allow_random_head``; the manifest records both (``random_heads``,
    ``allow_random_head``).

    ``detector`` (export.detection's DetectorHeads on this trunk) adds ``head_det_rpn`` and ``head_det_box``
    (export.det_graphs' graphs, through the same parity gate) and the manifest's ``detector`` entry (its config
    and the FPN levels' strides); without other ``heads`` the bundle's task is ``det`` and its classes the
    detector's.

    Raises ValueError on bad arguments and ParityError when an engine disagrees with
    PyTorch; in both cases ``out_dir`` is left as it was.
    """
    log = log or (lambda _msg: None)
    formats, heads = list(formats), list(heads or ([] if detector is not None else [model.cfg.task]))
    _check_args(model, height, width, batch, formats, precision, heads, device)
    random_heads = _random_heads(model, heads, allow_random_head)
    work = copy.deepcopy(model).to(device).eval()  # never flip the caller's model out of train mode
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    manifest = base_manifest(work, height, width, batch, precision, command)
    if set(heads) == {"pose"}:  # the runtime runs the manifest task's head: head_pose, keypoints per frame
        manifest["task"] = "pose"
    if detector is not None:
        detector = _detector_manifest(manifest, work, detector, heads)
    if weights:
        manifest["weights"] = weights
    manifest["random_heads"], manifest["allow_random_head"] = random_heads, allow_random_head
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, default_mode(0o777))
        if "plan" in formats and (out / TIMING_CACHE).is_file():
            shutil.copy2(out / TIMING_CACHE, tmp / TIMING_CACHE)  # faster TensorRT rebuilds
        with exact_fp32():
            for graph in build_graphs(work, height, width, batch, precision, device, heads):
                entry = export_engine(graph, tmp, formats, precision, device, log, skip_parity)
                manifest["engines"][graph.name] = entry
            if detector is not None:
                from export.det_graphs import det_graph_parts

                for parts in det_graph_parts(work, detector, height, width, batch, precision, device):
                    graph = EngineGraph(*parts)
                    manifest["engines"][graph.name] = export_engine(
                        graph, tmp, formats, precision, device, log, skip_parity
                    )
        _record_skips(manifest)
        write_manifest(manifest, tmp)
        _install_bundle(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return json.loads(json.dumps(manifest))  # exactly what a reader of manifest.json gets


__all__ = ["FORMATS", "HEADS", "ParityError", "build_graphs", "export_bundle", "export_engine"]
