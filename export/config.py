"""Model configurations: the published MDEQ configs and our CPU-friendly ``tiny``.

One dataclass describes everything the export side needs to build a model; the
runtime never sees it (it reads ``manifest.json``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# ImageNet statistics, as the published MDEQ preprocessing uses (RGB order).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SolveSpec:
    """How a model's fixed point is sought at inference: one entry of the manifest's config.

    Two entries per model: ``test_solve`` (a frame solved from scratch: the runtime's --mode frame and key frames
    from zero) and ``stream_solve`` (a frame warm-started from the previous one's state: --mode stream, stream-mv
    and warm key frames). The runtime reads them as ``runtime.solve.Solve`` (its docstring has the vocabulary).

    Published models are evaluated by the reference with Broyden's method: at most ``threshold`` updates after
    the first evaluation of f (so ``threshold + 1`` cell evaluations), stopping once ||f(z) - z||_2 <
    tol * sqrt(number of state elements) (``tol_kind="abs"``, ``tol_scale="sqrt_numel"``), and returning the
    iterate z (not f(z)) with the lowest such residual (``returns="lowest"``). StreamDEQ streams them with the
    same Broyden capped at K updates, an unscaled absolute tolerance of 1e-3 checked every update, returning and
    carrying the lowest-residual new iterate (``returns="lowest_new"``). Models trained by unrolling (UR/SUR)
    keep the plain iteration they were trained and measured with (``returns="f_last"``).
    """

    solver: str = "fixed_point"  # runtime solver name: fixed_point, anderson, broyden
    threshold: int = 20  # iterations per frame (Broyden: updates after the first evaluation)
    tol: float | None = None
    tol_kind: str = "rel"  # "abs": ||f(z)-z|| < tol (times sqrt(numel) with tol_scale "sqrt_numel"); "rel": relative
    returns: str = "f_last"  # f_last, last_iterate, lowest, lowest_new (runtime.solve.RETURNS)
    tol_scale: str = "sqrt_numel"  # abs tolerances: "sqrt_numel" (MDEQ's eps * sqrt(numel)) or "none"
    check_every: int | None = None  # iterations between tolerance checks (None: 1 with a tol, else 4)

    def __post_init__(self) -> None:
        if self.returns == "last":  # the name checkpoints written before "f_last" existed use for the same rule
            object.__setattr__(self, "returns", "f_last")

    @property
    def max_iter(self) -> int:
        """Cell evaluations per frame: Broyden evaluates f once more (the start's residual)."""
        return self.threshold + 1 if self.solver == "broyden" else self.threshold

    def to_entry(self) -> dict:
        """The manifest entry (no None check interval: the runtime picks it from the tolerance)."""
        return {k: v for k, v in asdict(self).items() if not (k == "check_every" and v is None)}


def reference_solve(f_thres: int) -> SolveSpec:
    """The reference's test-time solve (locuslab/mdeq DEQFunc2d: eps = 1e-5 * sqrt(numel))."""
    return SolveSpec(solver="broyden", threshold=f_thres, tol=1e-5, tol_kind="abs", returns="lowest")


def streamdeq_solve(k: int = 2) -> SolveSpec:
    """StreamDEQ's streaming solve (its ``MODE: stream`` configs, ``broyden(..., threshold=K, stop_mode='abs')``
    with eps 1e-3 on the whole-batch norm): K Broyden updates from the previous frame's iterate, the
    lowest-residual new iterate returned and carried. For DEQ-trained (IL) models."""
    return SolveSpec(
        solver="broyden", threshold=k, tol=1e-3, tol_kind="abs", tol_scale="none", returns="lowest_new", check_every=1
    )


def unrolled_solve(k: int = 2) -> SolveSpec:
    """The UR / SUR streaming rule: K plain applications of f from the previous frame's state, f of the last
    carried (what those models were trained to do)."""
    return SolveSpec(solver="fixed_point", threshold=k, returns="f_last")


# Training family -> streaming solve (export --family, a checkpoint's meta "mode").
FAMILY_SOLVES = {"il": streamdeq_solve, "ur": unrolled_solve, "sur": unrolled_solve}


@dataclass(frozen=True)
class MDEQConfig:
    """Architecture hyper-parameters of one MDEQ (see notes/mdeq-streamdeq.md §1)."""

    name: str
    channels: tuple[int, ...]  # per scale, finest first
    expansion: int = 5  # BasicBlock channel expansion E
    groups: int = 8  # GroupNorm groups (post-fusion GN uses groups // 2)
    dropout: float = 0.0  # variational dropout, training only
    num_classes: int = 19
    head_channels: int | None = None  # seg head width; default sum(channels)
    stem_stride: int = 4  # two stride-2 convs
    task: str = "seg"  # "seg" or "cls"
    f_thres: int = 20  # iterations from z = 0 that count as "converged"
    class_names: tuple[str, ...] = field(default_factory=tuple)
    palette: tuple[tuple[int, int, int], ...] = field(default_factory=tuple)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # Final logits -> input-resolution upsampling of the seg head. The reference's test script
    # (``inference``) uses bilinear align_corners=False; our tiny model was measured with True.
    upsample_align_corners: bool = True
    test_solve: SolveSpec = field(default_factory=SolveSpec)
    # Warm-started frames (StreamDEQ): plain unrolling unless the model was trained as an implicit layer.
    stream_solve: SolveSpec = field(default_factory=unrolled_solve)
    # Classification head (published HRNet-style head): Bottleneck widths per scale, final width.
    cls_head_channels: tuple[int, ...] = ()
    cls_final_channels: int = 2048
    # Relaxation of the cell: it outputs (1 - relax) z + relax f(z). The fixed points are f's; what changes is the
    # map plain iteration (streaming) runs, whose Jacobian is (1 - relax) I + relax df/dz: an eigenvalue lambda of
    # df/dz becomes 1 - relax (1 - lambda), so an oscillating mode (lambda < -1) contracts while the slow positive
    # ones slow a little. 1.0: the published cell.
    relax: float = 1.0
    # The post-fusion GroupNorms' affine parameters (MDEQ's POST_GN_AFFINE): StreamDEQ's detection and pose
    # backbones turn them off, so their checkpoints have no post_fuse_layers.*.gnorm weights.
    post_gn_affine: bool = True

    @property
    def num_scales(self) -> int:
        return len(self.channels)

    @property
    def strides(self) -> tuple[int, ...]:
        """Stride of each state scale relative to the input frame."""
        return tuple(self.stem_stride * 2**i for i in range(self.num_scales))

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this (the coarsest stride)."""
        return self.strides[-1]

    def to_dict(self) -> dict:
        return asdict(self)


# Classes of our synthetic benchmark (export/synthetic.py draws them).
SYNTH_CLASSES = ("road", "sky", "building", "vegetation", "car", "person", "sign")
SYNTH_PALETTE = (
    (128, 64, 128),
    (70, 130, 180),
    (70, 70, 70),
    (107, 142, 35),
    (0, 0, 142),
    (220, 20, 60),
    (220, 220, 0),
)

CONFIGS: dict[str, MDEQConfig] = {
    "tiny": MDEQConfig(
        name="tiny",
        channels=(16, 32, 64, 128),
        expansion=2,
        groups=4,
        dropout=0.05,
        num_classes=len(SYNTH_CLASSES),
        head_channels=64,
        f_thres=20,
        class_names=SYNTH_CLASSES,
        palette=SYNTH_PALETTE,
        test_solve=SolveSpec("fixed_point", threshold=20),
    ),
    # Published configs (locuslab/mdeq experiments/*.yaml): F_THRES, test-time Broyden, align_corners=False.
    "small-seg": MDEQConfig(
        name="small-seg",
        channels=(32, 64, 128, 256),
        expansion=5,
        dropout=0.05,
        f_thres=27,
        upsample_align_corners=False,
        test_solve=reference_solve(27),
        stream_solve=streamdeq_solve(),
    ),
    "xl-seg": MDEQConfig(
        name="xl-seg",
        channels=(88, 176, 352, 704),
        expansion=6,
        dropout=0.04,
        f_thres=26,
        upsample_align_corners=False,
        test_solve=reference_solve(26),
        stream_solve=streamdeq_solve(),
    ),
    "small-cls": MDEQConfig(
        name="small-cls",
        channels=(32, 64, 128, 256),
        expansion=5,
        num_classes=1000,
        task="cls",
        f_thres=26,
        test_solve=reference_solve(26),
        stream_solve=streamdeq_solve(),
        cls_head_channels=(24, 48, 96, 192),
        cls_final_channels=2048,
    ),
    "xl-cls": MDEQConfig(
        name="xl-cls",
        channels=(88, 176, 352, 704),
        expansion=6,
        num_classes=1000,
        task="cls",
        f_thres=27,
        test_solve=reference_solve(27),
        stream_solve=streamdeq_solve(),
        cls_head_channels=(32, 64, 128, 256),
        cls_final_channels=2048,
    ),
}


# StreamDEQ's ImageNet-VID detector backbone (ImageNetVID/configs/mdeq/mdeq_det_cfg.yaml: the XL trunk with
# EXPANSION_FACTOR 6, POST_GN_AFFINE false, F_THRES 26), importable from its MMDetection checkpoints' backbone.*
# keys. Only the MDEQ trunk: the FPN and the detection heads belong to a detection task, which is not built yet, so
# its seg head stays at init and an export needs --allow-random-head (for the streaming states alone).
CONFIGS["xl-det"] = MDEQConfig(
    name="xl-det",
    channels=(88, 176, 352, 704),
    expansion=6,
    dropout=0.0,
    f_thres=26,
    upsample_align_corners=False,
    test_solve=reference_solve(26),
    stream_solve=streamdeq_solve(),
    post_gn_affine=False,
)


def get_config(name: str) -> MDEQConfig:
    """Look a config up by name, with an error that lists the known ones."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}") from None


# ImageNet-VID's 30 classes, in the order of StreamDEQ's dataset config (ImageNetVID/configs/_base_/datasets/
# imagenet_vid_dataset_mdeq.py), which is its detector's class index order.
VID_CLASSES = (
    "airplane", "antelope", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog", "domestic_cat",
    "elephant", "fox", "giant_panda", "hamster", "horse", "lion", "lizard", "monkey", "motorcycle", "rabbit",
    "red_panda", "sheep", "snake", "squirrel", "tiger", "train", "turtle", "watercraft", "whale", "zebra",
)  # fmt: skip


@dataclass(frozen=True)
class DetectorConfig:
    """The Faster R-CNN neck and heads on an MDEQ trunk (StreamDEQ's ImageNet-VID detector, MMDetection 2.x).

    Architecture: an FPN from the trunk's scales to ``fpn_channels``, ``num_outs`` levels (those past the trunk's
    are stride-2 max pools of the last); an RPN (one shared 3x3 conv, sigmoid objectness and box deltas for
    ``len(anchor_scales) * len(anchor_ratios)`` anchors per position, anchors of side ``stride * scale`` centred on
    ``stride * (x, y)``); multi-level RoIAlign (``roi_size`` squared, aligned, adaptive sampling when
    ``roi_sampling_ratio`` is 0) on the first ``roi_levels`` levels, a RoI of side sqrt(w h) going to level
    floor(log2(side / roi_finest_scale)); a shared two-FC box head (``fc_channels``), ``num_classes`` + background
    scores and class-specific deltas. The rest are the test settings. Deltas decode as MMDetection's
    DeltaXYWHBBoxCoder: denormalised by means/stds, dw and dh clamped to |log(wh_ratio_clip)|, boxes clipped to
    the image. ``roi_max_grid``: None samples every RoI on its exact adaptive grid; an integer caps the samples per
    bin and axis (a cheaper fixed-size approximation for the RoIs whose grid exceeds it).
    """

    name: str
    num_classes: int = 30
    class_names: tuple[str, ...] = ()
    fpn_channels: int = 256
    num_outs: int = 5
    anchor_scales: tuple[float, ...] = (8.0,)
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_channels: int = 256
    rpn_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    rpn_stds: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    roi_size: int = 7
    roi_levels: int = 4
    roi_sampling_ratio: int = 0
    roi_finest_scale: float = 56.0
    roi_max_grid: int | None = None
    fc_channels: int = 1024
    bbox_means: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    bbox_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    wh_ratio_clip: float = 16 / 1000
    # Test settings (test_cfg.rpn / test_cfg.rcnn): top-k per level before NMS, proposals kept after it.
    rpn_pre_nms: int = 1000
    rpn_nms_iou: float = 0.7
    rpn_proposals: int = 1000
    rpn_min_size: float = 0.0
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100

    @property
    def num_anchors(self) -> int:
        """Anchors per position of every RPN level."""
        return len(self.anchor_scales) * len(self.anchor_ratios)

    def strides(self, trunk: MDEQConfig) -> tuple[int, ...]:
        """Stride of each FPN (and anchor) level: the trunk's, then doubling for the max-pooled levels."""
        return tuple(trunk.stem_stride * 2**i for i in range(self.num_outs))

    def to_dict(self) -> dict:
        return asdict(self)


# StreamDEQ's detector heads (ImageNetVID/configs/_base_/models/faster_rcnn_mdeq_fpn.py and its test_cfg), for the
# xl-det trunk; keyed by the trunk config's name.
DETECTOR_CONFIGS: dict[str, DetectorConfig] = {"xl-det": DetectorConfig(name="xl-det", class_names=VID_CLASSES)}
