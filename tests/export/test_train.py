"""UR / SUR / IL training steps, resume, and the exact checkpoint format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.config import get_config
from export.mdeq import build_model
from export.synthetic import random_batch
from export.train import forward_train, load_model, main, seg_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("mode", ["sur", "ur", "il"])
def test_steps_reduce_loss_on_fixed_batch(mode: str) -> None:
    torch.manual_seed(0)
    model = build_model(get_config("tiny"))
    # plain scenes: at 32x64 a context crop's labels are mostly unknowable, which tests the data, not the step
    frames, labels = random_batch(np.random.default_rng(1), 2, 32, 64, variant="plain")
    x, y = torch.from_numpy(frames), torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)

    def eval_loss() -> float:  # fixed iteration count, no dropout: comparable before and after
        model.eval()
        with torch.no_grad():
            loss = float(seg_loss(model(x, iters=4), y))
        model.train()
        return loss

    before = eval_loss()
    model.train()
    for _ in range(8):
        loss = seg_loss(forward_train(model, x, mode, 4, rng), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < 0.8 * before


def _args(out, steps: int, crop: tuple[str, str] = ("32", "64")) -> list[str]:
    return ["--mode", "sur", "--iters", "2", "--steps", str(steps), "--batch", "2", "--crop", *crop,
            "--out", str(out), "--val-every", "2", "--val-frames", "1", "--no-progress", "--device", "cpu"]  # fmt: skip


def test_checkpoint_format_and_resume(tmp_path) -> None:
    out = tmp_path / "m.pt"
    assert main(_args(out, 3)) == 0
    obj = torch.load(out, weights_only=False)
    assert set(obj) == {"format", "config", "state_dict", "meta"}
    assert obj["format"] == "deqstream-ckpt/1"
    assert obj["config"] == get_config("tiny").to_dict()
    for key in ("mode", "iters", "steps", "wall_time_s", "machine", "command", "val_miou"):
        assert key in obj["meta"], key
    assert obj["meta"]["steps"] == 3 and obj["meta"]["mode"] == "sur"
    first = {k: v.clone() for k, v in obj["state_dict"].items()}

    assert main([*_args(out, 5), "--resume"]) == 0  # continues at step 3, does not restart
    obj2 = torch.load(out, weights_only=False)
    assert obj2["meta"]["steps"] == 5
    steps = [json.loads(line)["step"] for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert steps.count(2) == 1 and 4 in steps and 5 in steps
    assert any(not torch.equal(first[k], obj2["state_dict"][k]) for k in first)

    model, meta = load_model(out)
    model.eval()
    frame = torch.from_numpy(random_batch(np.random.default_rng(2), 1, 32, 64)[0])
    ref = build_model(get_config("tiny"))
    ref.load_state_dict(obj2["state_dict"])
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(frame, iters=2), ref(frame, iters=2))


def test_bad_input_is_one_line(tmp_path, capsys) -> None:
    assert main(_args(tmp_path / "x.pt", 1, ("30", "60"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
