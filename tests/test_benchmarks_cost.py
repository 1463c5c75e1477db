"""The train-step benchmark's counted figures: per-op bytes of an optimized HLO module
(benchmarks/hlo_bytes.py) against XLA's own total, the buffers live at a program's memory peak
(benchmarks/peak_memory.py), the collectives `mesh_step.py` counts in a program's text,
`train_step.py --compile-only` end to end on the tiny preset
(slow: compiles the unrolled train step), and `gpu_compile.py`'s error without the CUDA
plugin."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
from hlo_bytes import bytes_breakdown, op_bytes, shape_bytes  # noqa: E402
from mesh_step import collectives  # noqa: E402
from xla_profile import compile_phases, fusions_by_module  # noqa: E402

KEYS = ("preset", "dtype", "conv_impl", "size", "batch", "flops_per_image",
        "bytes_accessed_per_image", "temp_bytes_per_image")


def _compiled(length: int, unroll: bool):
    def loss(x, w):
        y = jnp.tanh(x @ w) * 2.0
        y = jax.lax.scan(lambda c, _: (jnp.sin(c) + 1.0, None), y, None, length=length,
                         unroll=unroll)[0]
        return y.sum()
    x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
    return jax.jit(jax.grad(loss, argnums=1)).lower(x, w).compile()


def test_mesh_step_counts_collectives_and_their_bytes():
    hlo = """
  %all-gather.5 = f32[8,128,4,4]{1,3,2,0} all-gather(%bitcast.8), channel_id=1, dimensions={0}
  %all-reduce.3 = (f32[16,32]{1,0}, bf16[32]{0}) all-reduce(%a, %b), channel_id=2, to_apply=%s
  %collective-permute.1 = f32[1024,16]{1,0} collective-permute(%m), channel_id=3
  %all-gather-start = (f32[2,8]{1,0}, f32[16,8]{1,0}) all-gather-start(%p), dimensions={0}
  %all-gather-done = f32[16,8]{1,0} all-gather-done(%all-gather-start)
  %add.1 = f32[4]{0} add(%x, %y)
"""
    assert collectives(hlo) == {
        "all-reduce": dict(count=1, bytes=16 * 32 * 4 + 32 * 2),
        "all-gather": dict(count=2, bytes=8 * 128 * 16 * 4 + 16 * 8 * 4),  # -start: its output
        "collective-permute": dict(count=1, bytes=1024 * 16 * 4)}
    assert collectives("%add.1 = f32[4]{0} add(%x, %y)") == {}


def test_shape_bytes():
    assert shape_bytes("f32[4,64]{1,0}") == 4 * 64 * 4
    assert shape_bytes("(s32[], bf16[3,5]{1,0}, pred[7])") == 4 + 2 * 15 + 7
    assert shape_bytes("f32[]") == 4 and shape_bytes("token[]") == 0


def test_per_op_bytes_add_up_to_the_cost_analysis():
    compiled = _compiled(3, unroll=True)
    result = bytes_breakdown([compiled])
    # Every op here reads and writes whole arrays, so the estimate is XLA's figure exactly.
    assert result["estimated"] == result["cost_analysis"] > 0
    assert sum(r["bytes"] for r in result["modules"]) == result["estimated"]
    directions = {r["name"].split(":")[0] for r in result["modules"]}
    assert {"forward", "backward"} <= directions, directions
    # The matmul's operands and result: (64, 32), (32, 16) -> (64, 16) float32.
    (matmul,) = [r for r in result["ops"] if r["op_name"].endswith("jvp()/dot_general")]
    assert matmul["bytes"] == 4 * (64 * 32 + 32 * 16 + 64 * 16)


def test_a_fusion_that_slices_an_operand_is_charged_the_slices():
    """The flat optimiser's pattern: per-leaf outputs sliced out of one long vector."""
    def unravel(v, a, b):
        return a + v[:100].reshape(10, 10), b * v[100:150]
    v, a, b = jnp.ones((100_000,)), jnp.ones((10, 10)), jnp.ones((50,))
    compiled = jax.jit(unravel).lower(v, a, b).compile()
    result = bytes_breakdown([compiled])
    assert result["estimated"] == pytest.approx(result["cost_analysis"], rel=0.05)
    # Each output's fusion reads its slice of `v` (and its other operand), not all of `v`.
    assert all(r["bytes"] < 4 * 1000 for r in result["ops"]), result["ops"]


# A fusion that slices its first operand after an element-wise divide (the GPU compiler's form
# of the flat optimiser's per-leaf update) and its second after a convert, beside a library call.
SLICED_THROUGH_ELEMENTWISE = """HloModule m

%fused (p0: f32[1000], p1: f32[], p2: f32[1000]) -> (f32[10], bf16[20]) {
  %p0 = f32[1000]{0} parameter(0)
  %p1 = f32[] parameter(1)
  %p2 = f32[1000]{0} parameter(2)
  %b = f32[1000]{0} broadcast(%p1), dimensions={}
  %d = f32[1000]{0} divide(%p0, %b)
  %s = f32[10]{0} slice(%d), slice={[0:10]}
  %c = bf16[1000]{0} convert(%p2)
  %t = bf16[20]{0} slice(%c), slice={[10:30]}
  ROOT %r = (f32[10]{0}, bf16[20]{0}) tuple(%s, %t)
}

ENTRY %main (a: f32[1000], c: f32[], e: f32[1000], x: f32[64,32]) -> f32[64,16] {
  %a = f32[1000]{0} parameter(0)
  %c = f32[] parameter(1)
  %e = f32[1000]{0} parameter(2)
  %x = f32[64,32]{1,0} parameter(3)
  %f = (f32[10]{0}, bf16[20]{0}) fusion(%a, %c, %e), kind=kLoop, calls=%fused
  ROOT %g = f32[64,16]{1,0} custom-call(%x), custom_call_target="__cublas$gemm"
}
"""


def test_slices_are_found_through_elementwise_ops_on_request():
    (fusion, _) = op_bytes(SLICED_THROUGH_ELEMENTWISE)
    result = 4 * 10 + 2 * 20
    assert fusion["bytes"] == 4 * 1000 + 4 + 4 * 1000 + result  # whole operands, as XLA's
    (fusion, gemm) = op_bytes(SLICED_THROUGH_ELEMENTWISE, elementwise=True)
    # 10 and 20 elements of the two f32 operands; the scalar is broadcast, read whole.
    assert fusion["bytes"] == 4 * 10 + 4 + 4 * 20 + result
    assert gemm["bytes"] == 4 * (64 * 32 + 64 * 16)


def test_gpu_counted_bytes_split_by_kind():
    from gpu_compile import counted_bytes
    counts = counted_bytes(SLICED_THROUGH_ELEMENTWISE, batch=2)
    assert counts["bytes_by_kind_per_image"] == {
        "fusions": (4 * 10 + 4 + 4 * 20 + 4 * 10 + 2 * 20) / 2,
        "library calls": 4 * (64 * 32 + 64 * 16) / 2, "FFTs": 0.0, "other": 0.0}
    assert counts["bytes_per_image"] == sum(counts["bytes_by_kind_per_image"].values())


def test_the_reference_task_computes_with_the_pre_lean_forms():
    from reference_forms import REFERENCE
    from step_counts import bench_config, deblur_task
    config = bench_config("tiny", "float32", "reference", 2, 32)
    assert config.model.conv_impl == "lax"
    reference, lean = deblur_task(config, "reference"), deblur_task(config)
    assert reference.model.backend is REFERENCE
    assert lean.model.backend.name == "lax" and lean.model.backend is not REFERENCE

    def param_shapes(task):
        image = jnp.zeros((1, 32, 32, 3))
        return jax.tree.map(jnp.shape, jax.eval_shape(task.model.init, jax.random.key(0),
                                                      image)["params"])
    assert param_shapes(reference) == param_shapes(lean)


def test_loop_bodies_count_once():
    rolled = {r["name"] for r in op_bytes(_compiled(3, unroll=False).as_text())}
    longer = op_bytes(_compiled(30, unroll=False).as_text())
    assert {r["name"] for r in longer} == rolled  # same ops: the body is not repeated
    assert any("while/body" in r["op_name"] for r in longer)


def test_compile_phases_time_the_compile():
    x = jnp.arange(12.0).reshape(3, 4)
    lowered = jax.jit(lambda a: jnp.tanh(a @ a.T).sum()).lower(x)
    compiled, result = compile_phases(lowered.compile)
    assert float(compiled(x)) == pytest.approx(float(jnp.tanh(x @ x.T).sum()))
    phases = result["phases"]
    assert phases and all(not r["name"].startswith("$") for r in phases)  # no Python frames
    assert [r["ms"] for r in phases] == sorted((r["ms"] for r in phases), reverse=True)
    # The backend's compile is one span on one thread, within the traced wall time.
    (backend,) = [r for r in phases if r["name"] == "backend_compile_and_load"]
    assert backend["count"] == 1 and 0 < backend["ms"] <= result["wall_ms"]


def test_fusions_by_module_counts_every_fusion():
    compiled = _compiled(3, unroll=True)
    text = compiled.as_text()
    rows = fusions_by_module([text, text])  # two programs: counts add up
    total = sum(" fusion(" in line and " = " in line for line in text.splitlines())
    assert total > 0 and sum(r["count"] for r in rows) == 2 * total
    assert [r["count"] for r in rows] == sorted((r["count"] for r in rows), reverse=True)
    directions = {r["name"].split(":")[0] for r in rows}
    assert "backward" in directions, rows  # the gradient's fusions are attributed


@pytest.mark.slow
def test_compile_only_rows(tmp_path):
    out = tmp_path / "rows.json"
    # The counted figures are XLA's analyses of the optimized HLO, made before LLVM runs: its
    # optimisation off changes none of them and shortens the compile.
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_backend_optimization_level=0")
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "train_step.py"),
                        "--presets", "tiny", "--size", "32", "--batch", "1", "--compile-only",
                        "--remat", "stem", "--layout", "per_leaf", "--bytes-breakdown", "5",
                        "--json", str(out)],
                       env=env, capture_output=True, text=True, timeout=3000)
    assert p.returncode == 0, p.stderr[-4000:]
    (row,) = json.loads(out.read_text())
    assert all(k in row for k in KEYS), sorted(row)
    assert (row["preset"], row["dtype"], row["size"], row["batch"], row["remat"],
            row["layout"]) == ("tiny", "float32", 32, 1, "stem", "per_leaf")
    assert "step_s" not in row  # nothing timed
    for k in ("flops_per_image", "flops_executed_per_image", "bytes_accessed_per_image",
              "temp_bytes_per_image"):
        assert row[k] > 0, (k, row[k])
    assert row["bytes_accessed_per_image"] >= row["temp_bytes_per_image"]
    breakdown = row["bytes_breakdown"]
    # The per-op estimate charges whole operands where XLA may know of partial reads (an
    # in-place update): at least most of XLA's total, never far above.
    assert 0.5 < breakdown["estimated_per_image"] / breakdown["cost_analysis_per_image"] < 1.5
    assert breakdown["cost_analysis_per_image"] == pytest.approx(row["bytes_accessed_per_image"])
    assert any(r["name"].startswith("backward: decoder") for r in breakdown["modules"])
    assert "| module | MiB | share |" in p.stdout and "GiB accessed/img" in p.stdout


# XLA reads its flags when the backend starts: the dump needs a process of its own.
_PEAK_PROBE = """
import json, os, sys, tempfile
dump = tempfile.mkdtemp()
os.environ["XLA_FLAGS"] = f"--xla_dump_to={dump} --xla_dump_hlo_module_re=.*compose.*"
import flax.linen as nn
import jax, jax.numpy as jnp
import peak_memory

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = jnp.tanh(nn.Dense(512, name="wide")(x))  # (4096, 512): kept for the backward
        return jnp.sum(jnp.sin(nn.Dense(4, name="narrow")(h)))

def compose(p, x):
    return jax.grad(lambda p: Net().apply(p, x))(p)

x = jnp.ones((4096, 64))
params = Net().init(jax.random.key(0), x)
compiled = jax.jit(compose).lower(params, x).compile()
(report,) = peak_memory.live_range_reports(dump)
peak = int(report.split(peak_memory._PEAK)[1].split("bytes")[0].replace(" ", ""))
print(json.dumps({"group": peak_memory.group(peak_memory.peak_entries(report)), "peak": peak,
                  "args": compiled.memory_analysis().argument_size_in_bytes}))
"""


def test_peak_memory_names_the_buffers_live_at_the_peak():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "benchmarks")]),
               JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", _PEAK_PROBE], env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    group = out["group"]
    # Every buffer of the report counted once: the program's inputs (params and x, by their
    # argument names) apart, the rest by module.
    assert group["arguments"] == out["args"]
    assert group["arguments"] + group["temporaries"] == out["peak"]
    modules = dict(group["modules"])
    activation = 4096 * 512 * 4
    assert modules["forward: (top level)"] == activation  # tanh(wide(x)), kept for the backward
    assert modules["backward: narrow"] >= activation  # the cotangent of h from `narrow`
    assert max(modules.values()) <= 2 * activation


def _has_cuda_plugin() -> bool:
    return (importlib.util.find_spec("jax_plugins") is not None
            and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None)


# An optimized GPU module's text, cut down: a multi-output fusion (a tuple shape) and a loop
# fusion; XLA names their kernels in its LLVM IR dumps with `_` for `.` and `-`.
GPU_HLO = """HloModule jit_compose, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_add (p0: f32[8]) -> (f32[8], f32[8]) {
  %p0 = f32[8]{0} parameter(0)
  ROOT %t = (f32[8]{0}, f32[8]{0}) tuple(%p0, %p0)
}

%fused_mul (p0: f32[8]) -> f32[8] {
  %p0 = f32[8]{0} parameter(0)
  ROOT %m = f32[8]{0} multiply(%p0, %p0)
}

ENTRY %main (x: f32[8]) -> f32[8] {
  %x = f32[8]{0} parameter(0)
  %loop_add_fusion.2 = (f32[8]{0}, /*index=1*/f32[8]{0}) fusion(%x), kind=kLoop, calls=%fused_add, metadata={op_name="jit(compose)/transpose(jvp(RADBlur))/decoder/add"}
  %gte = f32[8]{0} get-tuple-element(%loop_add_fusion.2), index=0
  ROOT %loop_multiply-fusion = f32[8]{0} fusion(%gte), kind=kLoop, calls=%fused_mul, metadata={op_name="jit(compose)/jvp(RADBlur)/stem/intro/mul"}
}
"""  # noqa: E501 - HLO instructions are one line each


def test_fusion_modules_include_multi_output_fusions():
    from xla_profile import fusion_modules
    assert fusion_modules(GPU_HLO, 2) == {"loop_add_fusion.2": "backward: decoder",
                                          "loop_multiply-fusion": "forward: stem/intro"}
    rows = fusions_by_module([GPU_HLO], 2)
    assert {r["name"]: r["count"] for r in rows} == {"backward: decoder": 1,
                                                     "forward: stem/intro": 1}


def test_gpu_code_sizes_charge_each_unit_to_its_kernels(tmp_path):
    from gpu_compile import code_sizes
    units = {"module_0001.jit_compose.1.ir-with-opt.ll":
             "define void @loop_add_fusion_2(ptr %a) {\n" + "x" * 900 + "}\n",
             "module_0001.jit_compose.2.ir-with-opt.ll":
             "define void @loop_multiply_fusion(ptr %a) {\n}\n"
             "define void @other_kernel(ptr %a) {\n}\n",
             "module_0001.jit_compose.3.ir-with-opt.ll": "declare void @f()\n",  # no kernel
             "module_0001.jit_compose.2.ir-no-opt.ll": "y" * 5000,  # not the optimized IR
             "module_0002.jit_other.1.ir-with-opt.ll": "z" * 5000}  # another program
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    code = code_sizes(str(tmp_path), [GPU_HLO], top=1)
    first = len(units["module_0001.jit_compose.1.ir-with-opt.ll"])
    second = len(units["module_0001.jit_compose.2.ir-with-opt.ll"])
    third = len(units["module_0001.jit_compose.3.ir-with-opt.ll"])
    assert code["units"] == 3 and code["ir_bytes"] == first + second + third
    assert {r["name"]: r["bytes"] for r in code["by_module"]} == {
        "backward: decoder": first, "forward: stem/intro": second / 2,
        "(not a fusion)": second / 2, "(no kernel)": third}
    assert code["largest"] == [dict(bytes=first, kernel="loop_add_fusion_2",
                                    module="backward: decoder")]


@pytest.mark.skipif(_has_cuda_plugin(), reason="the CUDA plugin is here: the script compiles")
def test_gpu_compile_without_the_cuda_plugin_says_what_to_install(tmp_path):
    out = tmp_path / "rows.json"
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "gpu_compile.py"),
                        "--json", str(out)], env=dict(os.environ, PYTHONPATH=REPO),
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0
    assert "no CUDA plugin" in p.stderr and "jax[cuda12]" in p.stderr, p.stderr[-2000:]
    assert not out.exists()
