"""benchmarks/inference.py end to end on the tiny preset at a small size: its rows and JSON,
and `--profile`'s op times attributed to the network's modules (xla_profile.py); the counts
of benchmarks/photo_memory.py."""
from __future__ import annotations

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import inference  # noqa: E402
from xla_profile import container_ops  # noqa: E402

HLO = """
ENTRY %main (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  %tuple.1 = (s32[], f32[4]{0}) tuple(%c, %p)
  %while.7 = (s32[], f32[4]{0}) while(%tuple.1), condition=%cond.2, body=%body.3
  %conditional = f32[4]{0} conditional(%b, %p, %p), true_computation=%t, false_computation=%f
  %call.1 = f32[4]{0} call(%p), to_apply=%g
  ROOT %multiply_fusion.2 = f32[4]{0} fusion(%p), kind=kLoop, calls=%fused_while_like
}
"""


def test_container_ops_are_loops_conditionals_and_calls():
    assert container_ops(HLO) == {"while.7", "conditional", "call.1"}


@pytest.mark.slow
def test_inference_profile_rows_and_json(tmp_path, capsys):
    out = tmp_path / "inference.json"
    assert inference.main(["--presets", "tiny", "--modes", "full", "--height", "56",
                           "--width", "84", "--repeats", "1", "--profile",
                           "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["preset"] == "tiny" and row["mode"] == "full" and row["steps"] == 2
    assert row["per_image_s"] > 0 and row["gflops"] > 0 and row["matmul_gflops_per_s"] > 0
    profile = row["profile"]
    assert profile["total_ms"] > 0
    modules = {m["name"] for m in profile["modules"]}
    # The whole-image forward: the depth branch and the decoder's sub-decoders show up by name,
    # and nothing runs backward.
    assert any(m.startswith("forward: RADBlur/depth") for m in modules), modules
    assert any(m.startswith("forward: RADBlur/decoder") for m in modules), modules
    assert not any(m.startswith("backward") for m in modules), modules
    # Loops are not charged on top of their bodies' ops.
    assert not {k["name"] for k in profile["kinds"]} & {"while", "conditional", "call"}
    assert "per-op profile: one call" in capsys.readouterr().out


@pytest.mark.slow
def test_photo_memory_counts_whole_and_windows(tmp_path, capsys):
    """benchmarks/photo_memory.py --count-only: XLA's count per mode, in the table and the
    JSON; windows count less than the whole image (the image twice plus one pass's windows)."""
    import photo_memory
    out = tmp_path / "rows.json"
    assert photo_memory.main(["--presets", "tiny", "--height", "200", "--width", "300",
                              "--tile", "64", "--overlap", "8", "--count-only",
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["mode"], r["tile"]) for r in rows] == [("whole", 0), ("windows", 64)]
    assert 0 < rows[1]["counted_gib"] < rows[0]["counted_gib"]
    assert all("cli_s" not in r for r in rows)
    table = capsys.readouterr().out
    assert f"| tiny | whole image | {rows[0]['counted_gib']:.2f} | - | - | - |" in table
    assert "| tiny | windows 64/8 |" in table
