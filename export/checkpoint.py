"""Checkpoints: our own format, and import of the published MDEQ checkpoints.

Our format (``deqstream-ckpt/1``) carries the config next to the weights so an export
never has to guess the architecture. Published MDEQ checkpoints use the same module
names as ``export.mdeq`` but keep weight norm as ``weight_g``/``weight_v`` pairs and
several duplicate copies of the cell (notes/mdeq-streamdeq.md §1-2); importing folds the
weight norm (W = g * v / ||v||) and keeps one copy. The reference's training scripts save them
in several layouts, all accepted: a ``FullModel(model, loss)`` state dict (``model.*`` plus the
loss's ``loss.criterion.weight``), the periodic ``checkpoint.pth.tar`` dict (``state_dict`` next
to ``epoch``, ``best_mIoU``/``perf``, ``optimizer``, ``lr_scheduler``), a bare state dict
(classification), any of them with DataParallel's ``module.`` prefix. Training-only entries are
dropped and listed in one line; a head whose keys are absent is left at init and named in
``model.untrained_heads``, so the exporter can refuse it. An MMPose top-down pose checkpoint (``backbone.*`` next to
``keypoint_head.*``, StreamDEQ's MPII models) brings its keypoint head as ``model.pose_head`` (export.pose_head).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from export.centernet import CenterNetConfig, CenterNetHead
from export.config import MDEQConfig, SolveSpec
from export.manifest import default_mode
from export.mdeq import MDEQSegNet
from export.pose_head import PREFIX as POSE_PREFIX
from export.pose_head import KeypointHead, KeypointLayout, PoseLayoutError, head_from_state, split_head

FORMAT = "deqstream-ckpt/1"
log = logging.getLogger(__name__)

# Our model registers the stem and the seg head twice (as parts of the model and inside the
# injection/head wrappers); the canonical, published names are the top-level ones.
ALIASES = {
    "injection.downsample.": "downsample.",
    "injection.stage0.": "stage0.",
    "head.last_layer.": "last_layer.",
    "head.incre_modules.": "incre_modules.",
    "head.downsamp_modules.": "downsamp_modules.",
    "head.final_layer.": "final_layer.",
    "head.classifier.": "classifier.",
}
TRUNK = ("downsample.", "stage0.", "fullstage.")
SEG_HEAD = ("last_layer.",)
CLS_HEAD = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")
HEAD_ENGINE = {"seg": "head_seg", "cls": "head_cls"}  # the engine each task's head becomes
DUPLICATES = ("fullstage_copy.", "deq.func_copy.", "deq.")
WRAPPER_PREFIXES = ("module.", "model.")  # DataParallel outside, FullModel inside: strip in this order
TRAINING_ONLY = ("loss.",)  # FullModel's loss (class weights of the cross entropy)
# An MMDetection detector (StreamDEQ's ImageNet-VID checkpoints: meta, state_dict, optimizer): the MDEQ trunk is its
# backbone; the neck and heads are another task's, set aside and named in one line.
DETECTOR_BACKBONE = "backbone."
DETECTOR_PARTS = ("neck.", "rpn_head.", "roi_head.", "bbox_head.", "mask_head.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (one-line message)."""


@dataclass
class ImportReport:
    """What an import did with the keys it did not map one to one."""

    source: str = ""
    folded: list[str] = field(default_factory=list)  # weight-norm pairs folded into .weight
    ignored: list[str] = field(default_factory=list)  # duplicate copies of the cell dropped
    training_only: list[str] = field(default_factory=list)  # loss tensors, optimizer, scheduler, epoch...
    detector_parts: list[str] = field(default_factory=list)  # an MMDetection checkpoint's neck / head prefixes
    kept_at_init: list[str] = field(default_factory=list)  # head keys the checkpoint lacks
    untrained_heads: list[str] = field(default_factory=list)  # head engines left (partly) at init

    def summary(self) -> str:
        parts = [f"folded weight norm in {len(self.folded)} convs", f"ignored {len(self.ignored)} duplicate keys"]
        if self.training_only:
            parts.append(f"ignored training-only entries: {', '.join(self.training_only)}")
        if self.detector_parts:
            parts.append(f"took the detector's backbone; left {', '.join(self.detector_parts)} (not imported)")
        if self.kept_at_init:
            prefixes = sorted({k.split(".")[0] for k in self.kept_at_init})
            parts.append(f"kept {len(self.kept_at_init)} head keys at init ({', '.join(prefixes)})")
        return "; ".join(parts)


# --------------------------------------------------------------------------- our format


def config_from_dict(d: Mapping[str, Any]) -> MDEQConfig:
    """Inverse of ``MDEQConfig.to_dict`` (JSON/pickle turn tuples into lists)."""
    names = {f.name for f in dataclasses.fields(MDEQConfig)}
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k not in names:
            continue
        if k == "palette":
            v = tuple(tuple(c) for c in v)
        elif k in ("test_solve", "stream_solve"):
            v = SolveSpec(**{f.name: v[f.name] for f in dataclasses.fields(SolveSpec) if f.name in v})
        elif isinstance(v, list):
            v = tuple(v)
        kw[k] = v
    return MDEQConfig(**kw)


def _plain(value: Any) -> Any:
    """Meta as plain Python (str subclasses such as torch.__version__ and numpy scalars would
    force a full unpickle on load)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, Tensor) and getattr(value, "shape", None) == ():
        return value.item()  # numpy scalar
    return value


def save_checkpoint(model: MDEQSegNet, path: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write our checkpoint format atomically (temp file in the same directory, then rename)."""
    payload = {"format": FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict(), "meta": _plain(meta)}
    head = getattr(model, "pose_head", None)
    if isinstance(head, KeypointHead):  # its weights are pose_head.* in state_dict; the layout is not in them all
        payload["pose_head"] = dataclasses.asdict(head.layout)
    det = getattr(model, "center_head", None)
    if isinstance(det, CenterNetHead):  # a one-stage detector (export.train_det): center_head.* weights, its config
        payload["center_head"] = det.det_cfg.to_dict()
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """torch.save into a temp file beside ``path``, then rename: a crash never leaves half a file.

    torch.save is handed the open file, not the temp file's name: given a name it calls the zip archive's folder
    after it (random here), so the same content would give different bytes each time; given a file it is always
    ``archive``, and the same checkpoint has the same sha256 (``make fast-interp``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.chmod(tmp, default_mode())  # mkstemp makes 0600; give the file the usual umask mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _torch_load(path: str | os.PathLike[str]) -> Any:
    """torch.load restricted to tensors and plain containers; a full unpickle only as a
    fallback for old checkpoints that need it (with a warning: pickles can run code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        # torch.__version__ (a TorchVersion) often ends up in meta; numpy scalars in the reference's
        # checkpoint.pth.tar (best_mIoU is a numpy float64): both harmless.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion, *_numpy_globals()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - any failure: try the permissive loader
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001 - report the first, more specific, error
            raise CheckpointError(f"cannot read checkpoint {path}: {str(first).splitlines()[0]}") from None
        warnings.warn(f"{path} needed a full unpickle (weights_only=False); only load trusted files", stacklevel=2)
        return obj


def _numpy_globals() -> list[Any]:
    """What torch.load needs to rebuild numpy scalars (``numpy._core`` on numpy 2, ``core`` before)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    found: list[Any] = [core.multiarray.scalar, np.dtype]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, n) for n in ("Float64DType", "Float32DType", "Int64DType") if hasattr(dtypes, n)]
    return found


def is_own_format(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def model_from_own(obj: Mapping[str, Any]) -> tuple[MDEQSegNet, dict[str, Any]]:
    cfg = config_from_dict(obj["config"])
    model = MDEQSegNet(cfg)
    layout = obj.get("pose_head")
    if isinstance(layout, Mapping):  # a keypoint head trained with the trunk (export.pose_head)
        fields = {**layout, "conv_kernels": tuple(layout.get("conv_kernels", ()))}
        model.pose_head = KeypointHead(cfg.channels, KeypointLayout(**fields))
    det = obj.get("center_head")
    if isinstance(det, Mapping):  # a CenterNet head trained with the trunk (export.train_det)
        model.center_head = CenterNetHead(cfg, CenterNetConfig.from_dict(dict(det)))
    try:
        model.load_state_dict(obj["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint weights do not fit its own config {cfg.name!r}: {first_line(e)}") from None
    model.untrained_heads = []  # a strict load: every head weight came from the file
    return model.eval(), dict(obj.get("meta", {}))


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[MDEQSegNet, dict[str, Any]]:
    """Read our format back: (model in eval mode, meta)."""
    obj = _torch_load(path)
    if not is_own_format(obj):
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint (a published MDEQ one? use import_published)")
    return model_from_own(obj)


# --------------------------------------------------------------------- published MDEQ


def first_line(e: BaseException) -> str:
    """An exception's first line (its type's name when it says nothing): the one line a CLI prints."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def _unwrap(obj: Any, report: ImportReport | None = None) -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint: bare, or under 'state_dict'/'model' of a training
    checkpoint, whose other entries (epoch, best_mIoU, optimizer, lr_scheduler...) go to
    ``report.training_only``."""
    if isinstance(obj, Mapping):
        if _is_state_dict(obj):
            return dict(obj)
        for key in ("state_dict", "model"):
            if _is_state_dict(obj.get(key)):
                if report is not None:
                    report.training_only.extend(str(k) for k in obj if k != key)
                return dict(obj[key])
    raise CheckpointError("checkpoint holds no state dict (expected a mapping of parameter names to tensors)")


def _strip_wrappers(sd: dict[str, Tensor], report: ImportReport | None = None) -> dict[str, Tensor]:
    """Drop the ``module.`` (DataParallel) and ``model.`` (FullModel) prefixes, and FullModel's
    training-only ``loss.*`` tensors (listed in ``report.training_only`` with their shapes)."""
    for prefix in WRAPPER_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}
    if any(k.startswith(DETECTOR_BACKBONE) for k in sd):
        sd = _detector_backbone(sd, report)
    dropped = [k for k in sd if k.startswith(TRAINING_ONLY)]
    if report is not None:
        report.training_only.extend(f"{k} {tuple(sd[k].shape)}" for k in dropped)
    return {k: v for k, v in sd.items() if k not in dropped}


def _detector_backbone(sd: dict[str, Tensor], report: ImportReport | None) -> dict[str, Tensor]:
    """An MMDetection detector's MDEQ trunk: ``backbone.*`` renamed; its neck and heads listed (with their key
    counts) in ``report.detector_parts``; any other key stays and fails the fit check by name."""
    out: dict[str, Tensor] = {}
    left: dict[str, int] = {}
    for k, v in sd.items():
        if k.startswith(DETECTOR_BACKBONE):
            out[k[len(DETECTOR_BACKBONE) :]] = v
        elif k.startswith(DETECTOR_PARTS):
            part = k.split(".")[0]
            left[part] = left.get(part, 0) + 1
        else:
            out[k] = v
    if report is not None:
        report.detector_parts.extend(f"{p}.* ({n} keys)" for p, n in left.items())
    return out


def fold_weight_norm(g: Tensor, v: Tensor) -> Tensor:
    """W = g * v / ||v||, the norm per output channel over all other dims (MDEQ's WN)."""
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))
    return g.view(-1, *([1] * (v.dim() - 1))) * v / norm


def _select_cell(sd: dict[str, Tensor], report: ImportReport) -> dict[str, Tensor]:
    """Keep one copy of the cell: ``fullstage.*``, or ``deq.func.*`` renamed when absent."""
    has_fullstage = any(k.startswith("fullstage.") for k in sd)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if k.startswith("deq.func.") and not has_fullstage:
            out["fullstage." + k[len("deq.func.") :]] = v
        elif k.startswith(DUPLICATES):
            report.ignored.append(k)
        else:
            out[k] = v
    return out


def _fold_all(sd: dict[str, Tensor], report: ImportReport) -> dict[str, Tensor]:
    out = dict(sd)
    for k in [k for k in sd if k.endswith(".weight_g")]:
        base = k[: -len("_g")]
        v_key = base + "_v"
        if v_key not in sd:
            raise CheckpointError(f"checkpoint has {k} but no {v_key} (cannot fold weight norm)")
        g, v = out.pop(k), out.pop(v_key)
        if g.numel() != v.shape[0]:
            raise CheckpointError(f"wrong shape: {k} {tuple(g.shape)} does not fit {v_key} {tuple(v.shape)}")
        out[base] = fold_weight_norm(g.float(), v.float()).to(v.dtype)
        report.folded.append(base)
    return out


def canonical_state(model: MDEQSegNet) -> dict[str, Tensor]:
    """The model's state dict without the alias copies (published names only)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(tuple(ALIASES))}


def with_aliases(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add the alias copies (``injection.downsample.*`` ...) that a strict load expects."""
    out = dict(sd)
    for alias, canon in ALIASES.items():
        out.update({alias + k[len(canon) :]: v for k, v in sd.items() if k.startswith(canon)})
    return out


def _mismatch_error(cfg: MDEQConfig, missing, unexpected, wrong, expected, given) -> CheckpointError:
    def first(keys: list[str], with_shape: dict[str, Tensor]) -> str:
        shown = ", ".join(f"{k} {tuple(with_shape[k].shape)}" for k in keys[:3])
        return shown + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {first(missing, expected)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {first(unexpected, given)}")
    if wrong:
        shown = ", ".join(
            f"{k} checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}" for k in wrong[:3]
        )
        parts.append(f"wrong shape {len(wrong)}: {shown}" + (f" (+{len(wrong) - 3} more)" if len(wrong) > 3 else ""))
    return CheckpointError(f"checkpoint does not fit config {cfg.name!r}: " + "; ".join(parts))


def _read(state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str], report: ImportReport) -> Any:
    """The checkpoint's content: loaded from a path (named in ``report.source``) or given as it is."""
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        report.source = str(state_dict_or_path)
        return _torch_load(state_dict_or_path)
    return state_dict_or_path


def import_published_with_report(
    state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str], cfg: MDEQConfig
) -> tuple[MDEQSegNet, ImportReport]:
    """Map a published MDEQ checkpoint onto ``MDEQSegNet(cfg)``; see ``import_published``."""
    report = ImportReport()
    obj = _read(state_dict_or_path, report)
    sd = _strip_wrappers(_unwrap(obj, report), report)
    given = _fold_all(_select_cell(sd, report), report)
    model = MDEQSegNet(cfg)
    expected = canonical_state(model)
    head = CLS_HEAD if cfg.task == "cls" else SEG_HEAD
    # Old BatchNorm checkpoints have no num_batches_tracked; it does not affect eval.
    absent = sorted(k for k in set(expected) - set(given) if not k.endswith("num_batches_tracked"))
    missing = [k for k in absent if not k.startswith(head)]  # the trunk must be complete
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(given[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        raise _mismatch_error(cfg, missing, unexpected, wrong, expected, given)
    report.kept_at_init = [k for k in absent if k.startswith(head)]
    if report.kept_at_init:  # the exporter refuses this head unless told otherwise
        report.untrained_heads.append(HEAD_ENGINE[cfg.task])
    model.load_state_dict(with_aliases({**expected, **given}))
    model.untrained_heads = list(report.untrained_heads)
    return model.eval(), report


def import_published(state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str], cfg: MDEQConfig) -> MDEQSegNet:
    """A published MDEQ checkpoint (path to .pth/.pkl/.pth.tar, or its content) as an ``MDEQSegNet``.

    Accepts every layout the reference saves (bare, FullModel, ``checkpoint.pth.tar`` dict,
    ``module.``-prefixed); strips the prefixes, drops training-only entries, keeps
    ``fullstage.*`` (or ``deq.func.*``), drops the ``*_copy``/``deq.*`` duplicates and folds
    weight norm. The trunk must be complete; head keys that are absent stay at init and the
    head is listed in ``model.untrained_heads``. Raises CheckpointError naming the first
    missing / unexpected / wrongly shaped keys when it does not fit (another architecture).
    """
    model, report = import_published_with_report(state_dict_or_path, cfg)
    log.info("imported %s: %s", report.source or "state dict", report.summary())
    return model


def _pose_keys(sd: Mapping[str, Any]) -> bool:
    return any(str(k).startswith(POSE_PREFIX) or str(k).startswith("module." + POSE_PREFIX) for k in sd)


def is_pose_checkpoint(obj: Any) -> bool:
    """An MMPose top-down checkpoint (``keypoint_head.*`` next to the trunk), bare or in a training dict."""
    if not isinstance(obj, Mapping):
        return False
    inner = obj.get("state_dict") if isinstance(obj.get("state_dict"), Mapping) else obj
    return _pose_keys(inner)


def import_pose_with_report(
    state_dict_or_path: Mapping[str, Any] | str | os.PathLike[str], cfg: MDEQConfig, align_corners: bool = False
) -> tuple[MDEQSegNet, ImportReport]:
    """An MMPose top-down pose checkpoint (StreamDEQ's MPII models): the ``backbone.*`` trunk imported as any
    published MDEQ checkpoint, the ``keypoint_head.*`` weights as ``model.pose_head`` (export.pose_head's layout).
    CheckpointError names the first keys that do not fit, trunk or head."""
    report = ImportReport()
    obj = _read(state_dict_or_path, report)
    sd = _unwrap(obj, report)
    sd = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in sd.items()}  # DataParallel
    trunk, head = split_head(sd)
    if not head:
        raise CheckpointError(f"no {POSE_PREFIX}* keys: not an MMPose top-down pose checkpoint")
    model, trunk_report = import_published_with_report(trunk, cfg)
    trunk_report.source, trunk_report.training_only[:0] = report.source, report.training_only
    try:
        model.pose_head = head_from_state(head, cfg.channels, align_corners=align_corners)
    except PoseLayoutError as e:
        raise CheckpointError(f"{report.source or 'checkpoint'}: {e}") from None
    return model.eval(), trunk_report


def load_any(path: str | os.PathLike[str], cfg: MDEQConfig | None) -> tuple[MDEQSegNet, dict[str, Any], str]:
    """Our format or a published one, detected from the content: (model, meta, description).

    ``cfg`` is required for a published checkpoint (it carries no config); for ours the
    stored config wins.
    """
    obj = _torch_load(path)
    if is_own_format(obj):
        model, meta = model_from_own(obj)
        return model, meta, f"{FORMAT} checkpoint (config {model.cfg.name!r})"
    if cfg is None:
        raise CheckpointError(f"{path} is a published MDEQ checkpoint; name its architecture with --config")
    if is_pose_checkpoint(obj):
        model, report = import_pose_with_report(obj, cfg)
        layout = model.pose_head.layout
        what = f"MMPose top-down pose checkpoint ({layout.joints} joints): {report.summary()}"
        return model, {"source": str(path), "published": True}, what
    model, report = import_published_with_report(obj, cfg)
    return model, {"source": str(path), "published": True}, f"published MDEQ checkpoint: {report.summary()}"
