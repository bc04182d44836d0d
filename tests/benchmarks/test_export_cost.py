"""benchmarks.export_cost on a tiny case: one child per case, its own peak memory, a clear error on bad input."""

from __future__ import annotations

import json

from benchmarks.export_cost import main


def test_export_cost_measures_a_child_export(tmp_path, capsys) -> None:
    out = tmp_path / "cost"
    assert main(["--cases", "tiny:32x64", "--threads", "1", "--out", str(out)]) == 0
    row = json.loads(out.with_suffix(".json").read_text())["rows"][0]
    assert row["returncode"] == 0 and row["wall_s"] > 0 and row["engine_mib"] > 0
    assert 100 < row["peak_rss_mib"] < 4096  # the child's own peak (a python + torch process), not ours
    assert row["parity_onnx"]["deq_cell"]["max_rel"] < 1e-3
    assert "| tiny | 32x64 | 1 |" in out.with_suffix(".md").read_text()
    assert main(["--cases", "tiny-32x64", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --cases")
