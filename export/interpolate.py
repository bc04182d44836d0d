"""Weight-space interpolation of two checkpoints of one architecture (WiSE-FT's idea, no training).

``theta(alpha) = (1 - alpha) * theta_A + alpha * theta_B`` for every floating tensor (weights, biases and the
BatchNorm running statistics alike); integer tensors (``num_batches_tracked``) are B's. With A a model and B a
fine-tune of it, alpha walks from one to the other, so a trade-off the fine-tune made (issue #26 item 4: fast
contraction on camera footage against synthetic accuracy) can be dialled without spending training minutes.
The sum is taken in float64 and rounded once, so alpha = 0 and alpha = 1 give A's and B's tensors bit for bit.

    python -m export.interpolate A.pt B.pt --alpha 0.7 --out X.pt
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from torch import Tensor

from export.checkpoint import CheckpointError, first_line, load_checkpoint, save_checkpoint
from export.mdeq import MDEQSegNet
from runtime.manifest import sha256_file

# Meta entries the benchmarks and `export.train --init` read; kept when A and B agree on them.
SHARED_META = ("mode", "iters", "variant")


def interpolate_state(a: dict[str, Tensor], b: dict[str, Tensor], alpha: float) -> dict[str, Tensor]:
    """(1 - alpha) a + alpha b per floating tensor, b's integer tensors; ValueError when keys or shapes differ."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"the checkpoints' tensors differ: {len(only)} keys in one only, first {only[0]}")
    out: dict[str, Tensor] = {}
    for k, vb in b.items():
        va = a[k]
        if va.shape != vb.shape or va.dtype != vb.dtype:
            raise ValueError(f"{k}: {tuple(va.shape)} {va.dtype} in A vs {tuple(vb.shape)} {vb.dtype} in B")
        if not vb.is_floating_point():
            out[k] = vb.clone()
            continue
        mixed = (1.0 - alpha) * va.double() + alpha * vb.double()
        out[k] = mixed.to(vb.dtype)
    return out


def interpolate_models(a: MDEQSegNet, b: MDEQSegNet, alpha: float) -> MDEQSegNet:
    """B's model with the interpolated weights (its config must equal A's)."""
    if a.cfg.to_dict() != b.cfg.to_dict():
        diff = sorted(k for k, v in a.cfg.to_dict().items() if b.cfg.to_dict().get(k) != v)
        raise ValueError(f"the checkpoints' configs differ ({', '.join(diff)})")
    mixed = interpolate_state(a.state_dict(), b.state_dict(), alpha)
    b.load_state_dict(mixed)
    return b.eval()


def build_meta(
    paths: tuple[Path, Path], metas: tuple[dict[str, Any], dict[str, Any]], alpha: float, command: str
) -> dict[str, Any]:
    """What the file came from: the command, both sources (path and sha256), alpha; shared training meta kept."""
    shared = {k: metas[1][k] for k in SHARED_META if k in metas[0] and k in metas[1] and metas[0][k] == metas[1][k]}
    return {
        **shared,
        "steps": 0,  # no training step of its own
        "command": command,
        "interpolation": {
            "alpha": alpha,
            "a": {"path": str(paths[0]), "sha256": sha256_file(paths[0])},
            "b": {"path": str(paths[1]), "sha256": sha256_file(paths[1])},
            "rule": "(1 - alpha) * a + alpha * b for floating tensors; integer tensors from b",
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.interpolate", description=__doc__.splitlines()[0])
    p.add_argument("a", type=Path, help="checkpoint at alpha = 0 (ours, deqstream-ckpt/1)")
    p.add_argument("b", type=Path, help="checkpoint at alpha = 1 (same config and tensors)")
    p.add_argument("--alpha", type=float, required=True, help="weight of B (0: A, 1: B; outside [0, 1] extrapolates)")
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (atomically)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    command = "python -m export.interpolate " + " ".join(
        shlex.quote(s) for s in (argv if argv is not None else sys.argv[1:])
    )
    try:
        if not math.isfinite(a.alpha):
            raise ValueError(f"--alpha must be a finite number, got {a.alpha}")
        for path in (a.a, a.b):
            if not path.is_file():
                raise ValueError(f"{path}: no such checkpoint")
        model_a, meta_a = load_checkpoint(a.a)
        model_b, meta_b = load_checkpoint(a.b)
        model = interpolate_models(model_a, model_b, a.alpha)
        out = save_checkpoint(model, a.out, build_meta((a.a, a.b), (meta_a, meta_b), a.alpha, command))
    except (ValueError, CheckpointError, OSError, RuntimeError) as e:
        print(f"error: {first_line(e)}", file=sys.stderr)
        return 2
    print(f"wrote {out}: alpha {a.alpha} between {a.a} and {a.b} (sha256 {sha256_file(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
