"""``python -m export``: checkpoint -> engine bundle (injection, deq_cell, heads, manifest).

The default ``--formats auto`` builds ONNX, plus a TensorRT ``.plan`` where TensorRT and a CUDA GPU are present (one
line says which and why); ``make export`` also adds the shipped FlowNet (``--flownet``) for ``--mode dff``.

Examples::

    python -m export --config tiny --checkpoint checkpoints/tiny_sur.pt --flownet checkpoints/flownet_tiny.pt
    python -m export --config tiny --random-init --height 256 --width 512 --out engines
    python -m export --config tiny --checkpoint checkpoints/tiny_sur.pt --formats onnx,pt2
    python -m export --config xl-seg --checkpoint MDEQ_XL_Seg.pkl --height 1024 --width 2048 --formats onnx,plan
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from export.config import CONFIGS, FAMILY_SOLVES, get_config
from runtime.errors import OneLineParser

EXIT_USAGE = 2  # bad input: missing file, bad resolution, TensorRT absent
EXIT_FAILED = 1  # the export ran and failed (e.g. parity)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m export",
        description="Export an MDEQ model as an engine bundle: injection, deq_cell and head graphs (ONNX, "
        "AOTInductor .pt2 and/or TensorRT .plan) plus manifest.json. Each engine is checked against "
        "PyTorch before it is written; the bundle directory is replaced atomically.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--config", choices=sorted(CONFIGS), help="architecture; a deqstream checkpoint carries its own")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--checkpoint",
        type=Path,
        help="weights: a deqstream-ckpt/1 file (make train) or a published MDEQ .pth/.pkl (auto-detected)",
    )
    src.add_argument("--random-init", action="store_true", help="export an untrained, seeded model (smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random-init")
    p.add_argument("--height", type=int, default=256, help="input frame height (multiple of 32)")
    p.add_argument("--width", type=int, default=512, help="input frame width (multiple of 32)")
    p.add_argument("--batch", type=int, default=1, help="static batch size of every engine")
    p.add_argument(
        "--formats",
        type=_csv,
        default="auto",
        help="comma list of onnx, pt2, plan; auto: onnx, plus plan where TensorRT and a CUDA GPU are present "
        "(one line says which were chosen and why)",
    )
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="engine precision (fp16: GPU)")
    p.add_argument(
        "--heads",
        type=_csv,
        default=None,
        help="comma list of seg, cls, pose, det (default: the config's task head, seg or cls); det: StreamDEQ's "
        "detector heads (a --config with a detector, e.g. xl-det; its MMDetection checkpoint, or --random-init)",
    )
    p.add_argument(
        "--allow-random-head",
        action="store_true",
        help="export heads whose weights are not in the checkpoint (e.g. a trunk-only file) with random weights; "
        "without it such an export stops. The manifest records the flag and the heads (random_heads)",
    )
    p.add_argument(
        "--device", default="auto", help="device for .pt2 compilation and reference outputs: auto, cpu or cuda"
    )
    p.add_argument("--out", type=Path, default=Path("engines"), help="bundle directory (replaced if it exists)")
    p.add_argument(
        "--flownet",
        type=Path,
        default=None,
        help="also add this trained FlowNet (export.train_flow) as the 'flownet' engine, for the runtime's --mode dff",
    )
    p.add_argument(
        "--family",
        choices=("il", "ur", "sur"),
        default=None,
        help="how the model was trained, which sets its streaming solve (manifest config.stream_solve): il "
        "(implicit, DEQ-trained: StreamDEQ's Broyden rule) or ur / sur (unrolled: K plain iterations). Default: "
        "the checkpoint's training mode (make train records it); il for a published MDEQ / StreamDEQ checkpoint",
    )
    p.add_argument(
        "--det-score-thr",
        type=float,
        default=None,
        metavar="T",
        help="detection bundles: record boxes scoring above T (the manifest's detector.score_thr). Default: the "
        "detector's own (a one-stage checkpoint's from export.train_det --score-thr; 0.05 for StreamDEQ's)",
    )
    p.add_argument(
        "--skip-parity",
        action="store_true",
        help="write engines that no backend here can run (fp16 on a CPU without the kernels) unchecked; the "
        "manifest lists them under parity_skipped. Without it such an export stops with an error",
    )
    return p


class UsageError(Exception):
    """Bad command-line input; main() prints it as one line and exits 2."""


def auto_formats() -> tuple[list[str], str]:
    """What ``--formats auto`` builds here, and the one line that says why.

    ONNX always (every machine runs it); a TensorRT ``.plan`` too where ``tensorrt`` imports and a CUDA GPU is
    present, since plans are built for, and only run on, the GPU they are built on."""
    import torch

    from export.tensorrt_build import TensorRTUnavailable, require_tensorrt

    try:
        trt = require_tensorrt()
    except TensorRTUnavailable:
        why = "TensorRT is not installed; pip install '.[tensorrt]' on a GPU machine"
        return ["onnx"], f"formats: onnx (no .plan: {why})"
    if not torch.cuda.is_available():
        return ["onnx"], "formats: onnx (no .plan: TensorRT is installed but no CUDA GPU is visible)"
    version = getattr(trt, "__version__", "?")
    return ["onnx", "plan"], f"formats: onnx,plan (TensorRT {version} on {torch.cuda.get_device_name(0)})"


def _check_static(args: argparse.Namespace) -> None:
    """Everything that can be rejected before any model is built (fast, one line)."""
    from export.bundle import FORMATS, HEADS

    if args.formats == ["auto"]:
        args.formats, why = auto_formats()
        print(why)
    cfg_name = args.config or "tiny"
    multiple = get_config(cfg_name).multiple
    if args.height <= 0 or args.width <= 0 or args.height % multiple or args.width % multiple:
        raise UsageError(
            f"--height and --width must be positive multiples of {multiple}, got {args.height}x{args.width}"
        )
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    bad = [f for f in args.formats if f not in FORMATS] or ([] if args.formats else ["(empty)"])
    if bad:
        raise UsageError(f"unknown --formats {','.join(bad)}; choose from {','.join(FORMATS)}")
    bad = [h for h in args.heads or [] if h not in (*HEADS, "det")]
    if bad:
        raise UsageError(f"unknown --heads {','.join(bad)}; choose from {','.join(HEADS)},det")
    if "det" in (args.heads or []):
        from export.config import DETECTOR_CONFIGS

        if args.config not in DETECTOR_CONFIGS:
            raise UsageError(f"--heads det needs --config with detector heads: {', '.join(DETECTOR_CONFIGS)}")
    if "plan" in args.formats:
        from export.tensorrt_build import require_tensorrt

        require_tensorrt()
    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UsageError(
            f"checkpoint not found: {args.checkpoint} (train one with `make train`, or pass --random-init)"
        )
    if args.flownet is not None and not args.flownet.is_file():
        raise UsageError(f"FlowNet checkpoint not found: {args.flownet} (train one with `python -m export.train_flow`)")
    if args.checkpoint is None and args.config is None:
        raise UsageError("--random-init needs --config")
    if args.det_score_thr is not None and not 0 <= args.det_score_thr < 1:
        raise UsageError(f"--det-score-thr must be in [0, 1), got {args.det_score_thr}")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    if name != "cpu" and not name.startswith("cuda"):
        raise UsageError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name


def _load_model(args: argparse.Namespace):
    from export.checkpoint import load_any
    from export.mdeq import build_model

    if args.random_init:
        what = f"random init (seed {args.seed})"
        return build_model(get_config(args.config), seed=args.seed), what, {"source": what}
    cfg = get_config(args.config) if args.config else None
    model, meta, what = load_any(args.checkpoint, cfg)
    if cfg is not None and model.cfg.name != cfg.name:
        print(f"note: the checkpoint holds config {model.cfg.name!r}; using it instead of --config {cfg.name}")
    keep = ("mode", "iters", "steps", "val_miou", "wall_time_s", "machine")
    return model, what, {"source": what, "checkpoint": str(args.checkpoint), **{k: meta[k] for k in keep if k in meta}}


def _load_detector(args: argparse.Namespace):
    """``--heads det``: the trunk and detector heads from StreamDEQ's MMDetection checkpoint (or seeded random ones)."""
    from export.config import DETECTOR_CONFIGS
    from export.detection import DetectorHeads, import_detector, random_init
    from export.mdeq import build_model

    trunk, det = get_config(args.config), DETECTOR_CONFIGS[args.config]
    if args.random_init:
        what = f"random init (seed {args.seed}), detector heads too"
        heads = random_init(DetectorHeads(trunk, det), seed=args.seed).eval()
        return build_model(trunk, seed=args.seed), heads, what, {"source": what}
    model, heads, report = import_detector(args.checkpoint, trunk, det)
    what = f"published detector {args.checkpoint}: {report.summary()}"
    return model, heads, what, {"source": f"published detector {args.checkpoint}", "checkpoint": str(args.checkpoint)}


def _family(args: argparse.Namespace, weights: dict) -> tuple[str | None, str]:
    """(training family or None, why): --family, else the checkpoint's training mode, else IL for a published
    checkpoint (the reference trains MDEQ as an implicit layer; StreamDEQ streams it with Broyden); None keeps the
    config's own streaming solve."""
    if args.family is not None:
        return args.family, "--family"
    if weights.get("mode") in FAMILY_SOLVES:
        return weights["mode"], f"the checkpoint's training mode {weights['mode']!r}"
    if weights.get("source", "").startswith("published"):
        return "il", "assumed: a published MDEQ / StreamDEQ checkpoint is DEQ-trained (IL)"
    return None, "the config's default"


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from export.bundle import export_bundle

    _check_static(args)
    device = _device(args.device)
    t0 = time.perf_counter()
    detector = None
    if "det" in (args.heads or []):
        model, detector, what, weights = _load_detector(args)
        args.heads = [h for h in args.heads if h != "det"] or None
    else:
        model, what, weights = _load_model(args)
        if getattr(model, "center_head", None) is not None and not args.heads:  # export.train_det's detector
            detector = model.center_head
            what += f", one-stage detector head ({detector.det_cfg.num_classes} classes)"
    print(f"model {model.cfg.name}: {what}")
    if detector is not None and args.det_score_thr is not None:
        detector = copy.copy(detector)  # the caller's (a loaded model's) head keeps its own setting
        detector.det_cfg = dataclasses.replace(detector.det_cfg, score_thr=args.det_score_thr)
        print(f"detector score threshold: {args.det_score_thr} (--det-score-thr)")
    family, why = _family(args, weights)
    if family is not None:
        model.cfg = dataclasses.replace(model.cfg, stream_solve=FAMILY_SOLVES[family]())
        weights.update(family=family, family_source=why)
    s = model.cfg.stream_solve
    print(f"streaming solve: {s.solver}, {s.threshold} iteration(s), returns {s.returns} ({why}; --family to change)")
    print(f"exporting {','.join(args.formats)} {args.precision} {args.batch}x{args.height}x{args.width} on {device}")
    export_bundle(
        model,
        args.out,
        args.height,
        args.width,
        batch=args.batch,
        formats=args.formats,
        precision=args.precision,
        device=device,
        heads=args.heads,
        allow_random_head=args.allow_random_head,
        command="python -m export " + shlex.join(argv),
        log=lambda msg: print(msg, flush=True),
        weights=weights,
        skip_parity=args.skip_parity,
        detector=detector,
    )
    if args.flownet is not None:
        from export.flownet_export import add_flownet
        from export.train_flow import load_flownet

        add_flownet(args.out, load_flownet(args.flownet)[0], args.formats, device, log=lambda m: print(m, flush=True))
    print(f"wrote {args.out}/ in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from export.checkpoint import CheckpointError
    from export.manifest import ManifestError
    from export.onnx_export import ParityError
    from export.tensorrt_build import TensorRTBuildError, TensorRTUnavailable

    try:
        return run(args, argv)
    except (UsageError, TensorRTUnavailable, CheckpointError, ManifestError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ParityError, TensorRTBuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
