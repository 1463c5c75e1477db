"""Where the accelerator train step's GPU compile goes, measured on a machine without a GPU.

    # in a copy of the environment: with the plugin and no GPU, JAX reports a CUDA error at
    # every start before falling back to the CPU
    pip install "jax[cuda12]==$(python -c 'import jax; print(jax.__version__)')"
    python benchmarks/gpu_compile.py --presets s --batch 16 --size 256 \
        [--program step|split|gradients|update] [--layout recipe|flat|per_leaf] \
        [--phases 30] [--code-sizes 10] [--counted] [--forms lean,reference] --json out.json

XLA compiles the deblur train step ahead of time for an NVIDIA H100 (`H100`, a device
description; `jax.experimental.topologies`): the GPU compiler's HLO passes, its LLVM and
`ptxas` work, on this host's CPU, from abstract shapes. Nothing needs a GPU or a driver, only
the CUDA plugin and libraries. The step is the one a GPU trains (`conv_impl=lax`, the
preset's recipe, bfloat16 compute, cuDNN attention, one program); `--program split`
compiles it as the split step's two programs (`train.split_step`), concurrently, and
`gradients` and `update` each of them alone; `--layout` sets `optimizer.layout` (the
optimiser's moments as one flat vector or per leaf; "recipe": the preset's). Without a
device XLA cannot time kernels, so there is no autotuning and XLA's Triton GEMMs are off
(their tile sizes come from autotuning): what remains is the compile's device-independent
part. On the GPU the same step also autotunes. Prints the compile's wall and CPU time, the
program's fusions by module and, with `--phases N`, the top N compile phases
(`xla_profile.compile_phases`). `--code-sizes N` has XLA dump the program (`--xla_dump_to`, a
temporary directory) and prints the optimized LLVM IR of its compile units (the kernels LLVM
and `ptxas` compile one unit at a time): their number and size, by the code that emitted
their kernels, and the N largest.

`--counted` compiles instead the step `train_step.py` counts on the CPU (float32, XLA's
attention, every scan unrolled; `--program step` for its one program) and adds what the GPU
program moves:
`bytes_per_image`, each top-level op of the optimized program charged its operands' and
result's bytes (`hlo_bytes.op_bytes`, slices found through element-wise ops: the GPU compiler
has no cost analysis to read without a device), split into fusions, library calls (cuBLAS,
cuDNN) and FFTs; and `temp_bytes_per_image` (memory analysis). The form `reference` builds the
model with the formulation the lean step replaced (`reference_forms.py`);
`--forms lean,reference` gives a row each, counted or not.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import glob
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

# An H100 SXM (80 GB HBM3) as XLA's GPU compiler sees it: the hardware figures NVIDIA publishes,
# and the CUDA and cuDNN versions to compile for (those of the jax-cuda12 wheels' era).
H100 = """
gpu_device_info {
  cuda_compute_capability { major: 9 minor: 0 }
  core_count: 132
  fpus_per_core: 128
  threads_per_warp: 32
  threads_per_block_limit: 1024
  threads_per_core_limit: 2048
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  shared_memory_per_block: 49152
  shared_memory_per_block_optin: 232448
  shared_memory_per_core: 233472
  l2_cache_size: 52428800
  memory_bandwidth: 3352320000000
  device_memory_size: 84929347584
  clock_rate_ghz: 1.98
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
runtime_version { major: 12 minor: 9 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def _deviceless_env(dump_dir: str | None = None) -> None:
    """Before JAX starts: no GPU is looked for, and the CUDA plugin loads without a driver;
    with `dump_dir`, XLA dumps what it compiles there."""
    os.environ["CUDA_VISIBLE_DEVICES"] = "-1"
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS"), "--xla_gpu_enable_triton_gemm=false",
        dump_dir and f"--xla_dump_to={dump_dir}"]))


def code_sizes(dump_dir: str, hlo_texts: list[str], top: int) -> dict:
    """The optimized LLVM IR that XLA dumped for the compiled programs' compile units
    (`*.<program>.*ir-with-opt.ll`): `{"units", "ir_bytes", "by_module", "largest"}`. A
    unit's bytes are split evenly over its kernels (a unit without one is "(no kernel)"); a
    kernel is charged to the code that emitted its fusion (`xla_profile.fusion_modules`;
    kernel names are fusion names with `.` and `-` as `_`)."""
    from xla_profile import fusion_modules

    emitted_by, programs = {}, set()
    for text in hlo_texts:
        programs.add(re.match(r"HloModule ([\w.\-]+)", text).group(1))
        emitted_by.update({re.sub(r"[.\-]", "_", fusion): module
                           for fusion, module in fusion_modules(text, 2).items()})
    units = []
    paths = [path for program in programs
             for path in glob.glob(os.path.join(dump_dir, f"*.{program}.*ir-with-opt.ll"))]
    for path in paths:
        with open(path) as f:
            ir = f.read()
        kernels = re.findall(r"^define [^@]*@([\w.\-]+)\(", ir, re.M)
        units.append(dict(bytes=len(ir), kernels=kernels,
                          modules=[emitted_by.get(k, "(not a fusion)") for k in kernels]
                          or ["(no kernel)"]))
    by_module: dict[str, float] = collections.defaultdict(float)
    for u in units:
        for m in u["modules"]:
            by_module[m] += u["bytes"] / len(u["modules"])
    units.sort(key=lambda u: -u["bytes"])
    return dict(units=len(units), ir_bytes=sum(u["bytes"] for u in units),
                by_module=[dict(name=n, bytes=b) for n, b in
                           sorted(by_module.items(), key=lambda kv: -kv[1])],
                largest=[dict(bytes=u["bytes"], kernel=u["kernels"][0] if u["kernels"] else "",
                              module=u["modules"][0]) for u in units[:top]])


def print_code_sizes(code: dict, top: int) -> None:
    """Markdown tables of `code_sizes`: by module, and the `top` largest units."""
    print(f"\n{code['units']} compile units, {code['ir_bytes'] / 1e6:.1f} MB of optimized "
          f"LLVM IR\n\n| emitted by | IR KB | share |\n|---|---|---|")
    for r in code["by_module"][:top]:
        print(f"| {r['name']} | {r['bytes'] / 1e3:.0f} | "
              f"{100 * r['bytes'] / code['ir_bytes']:.1f}% |")
    print("\n| largest unit: its first kernel | IR KB | emitted by |\n|---|---|---|")
    for r in code["largest"]:
        print(f"| {r['kernel']} | {r['bytes'] / 1e3:.0f} | {r['module']} |")


def counted_bytes(hlo_text: str, batch: int) -> dict:
    """Bytes per image a compiled GPU program moves (`--counted`): in all and by kind."""
    from hlo_bytes import op_bytes

    kinds = {"fusion": "fusions", "custom-call": "library calls", "fft": "FFTs"}
    split = dict.fromkeys([*kinds.values(), "other"], 0.0)
    for row in op_bytes(hlo_text, elementwise=True):
        split[kinds.get(row["opcode"], "other")] += row["bytes"] / batch
    return dict(bytes_per_image=sum(split.values()), bytes_by_kind_per_image=split)


def compile_for_h100(preset: str, batch: int, size: int, program: str, phases: int,
                     layout: str = "recipe", dump_dir: str | None = None,
                     code_top: int = 10, counted: bool = False, form: str = "lean") -> dict:
    """Compiles `program` of the preset's train step for `H100` ("step": one program;
    "split": its gradient and update programs, concurrently; "gradients" or "update" alone);
    the row of figures, with `code` (`code_sizes`) where XLA dumped to `dump_dir`. `counted`:
    the float32 step with every scan unrolled and its bytes (module docstring); `form`:
    "reference" builds the model with `reference_forms.REFERENCE`."""
    import jax
    from jax.experimental import topologies
    from step_counts import abstract_inputs, bench_config, deblur_task
    from xla_profile import compile_phases, fusions_by_module, print_compile_phases

    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=H100,
                                                topology="1x1x1")
    except Exception as e:  # noqa: BLE001 - without the plugin: "topology not implemented"
        raise SystemExit(f"gpu_compile.py: no CUDA plugin to compile with, or not one for this "
                         f"JAX version ({e}); install jax[cuda12] at this JAX version (see the "
                         "docstring)") from e
    mesh = topologies.make_mesh(topology, (1,), ("batch",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def on_gpu(tree):
        return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                           sharding=replicated), tree)

    # The CPU is this process's default backend: name what a GPU's "auto" would pick
    # (cuDNN's attention takes bfloat16 only).
    dtype = "float32" if counted else "bfloat16"
    config = bench_config(preset, dtype, "lax", batch, size, layout=layout, unroll=counted)
    config.model.encoder.attention_impl = "xla" if counted else "cudnn"
    task = deblur_task(config, "reference" if form == "reference" else None)
    state, images, optimizers = abstract_inputs(task, batch, size)
    state, images = on_gpu(state), on_gpu(images)
    jobs = []
    if program == "step":
        jobs.append((task.train_step(optimizers, split=False), (state, images)))
    if program in ("split", "gradients"):
        jobs.append((jax.jit(task.gradients), (state, images)))
    if program in ("split", "update"):
        grads = on_gpu(jax.eval_shape(task.gradients, state, images)[0])
        jobs.append((jax.jit(task.update(optimizers), donate_argnums=(0,)), (state, grads)))
    t0 = time.perf_counter()
    lowered = [fn.lower(*args) for fn, args in jobs]
    lower_s = time.perf_counter() - t0
    cpu0, t1 = time.process_time(), time.perf_counter()
    # The split step's two programs compile concurrently, as `SplitStep.compile` does.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(lowered)) as pool:
        compiled, profile = compile_phases(
            lambda: list(pool.map(lambda lo: lo.compile(), lowered)))
    compile_s, compile_cpu_s = time.perf_counter() - t1, time.process_time() - cpu0
    profile["fusions"] = fusions_by_module([c.as_text() for c in compiled], 2)
    print(f"\n# {preset} {program}, {form}, {dtype}, batch {batch}, {size}x{size}, for an H100 "
          f"(deviceless): lowering {lower_s:.1f} s, compile {compile_s:.1f} s "
          f"({compile_cpu_s:.1f} CPU-s)")
    if phases:
        print_compile_phases(profile, phases)
    code = None
    if dump_dir:
        code = code_sizes(dump_dir, [c.as_text() for c in compiled], code_top)
        print_code_sizes(code, code_top)
    counts = {}
    if counted:
        counts = counted_bytes("\n".join(c.as_text() for c in compiled), batch)
        counts["temp_bytes_per_image"] = max(
            c.memory_analysis().temp_size_in_bytes for c in compiled) / batch
    return dict(preset=preset, program=program, layout=config.optimizer.layout,
                dtype=dtype, conv_impl="lax", form=form, unrolled=counted, **counts,
                batch=batch, size=size, target="H100 (deviceless)", lower_s=lower_s,
                compile_s=compile_s, compile_cpu_s=compile_cpu_s,
                fusions=sum(r["count"] for r in profile["fusions"]),
                fusions_by_module=profile["fusions"], phases=profile["phases"][:max(phases, 40)],
                code=code)


def print_counted(rows: list[dict]) -> None:
    """The `--counted` rows: bytes moved (in all, by fusions, library calls and FFTs) and
    temporaries per image, GiB; the program's fusions and compile time."""
    gib = 2.0 ** 30
    print("\n| preset | form | batch x crop | GiB/img moved | in fusions | in library calls | "
          "in FFTs | temp GiB/img | fusions | compile s |\n" + "|---" * 10 + "|")
    for r in rows:
        kind = r["bytes_by_kind_per_image"]
        print(f"| {r['preset']} | {r['form']} | {r['batch']} x {r['size']} "
              f"| {r['bytes_per_image'] / gib:.2f} | {kind['fusions'] / gib:.2f} "
              f"| {kind['library calls'] / gib:.2f} | {kind['FFTs'] / gib:.2f} "
              f"| {r['temp_bytes_per_image'] / gib:.3f} | {r['fusions']} "
              f"| {r['compile_s']:.1f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="s")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--program", default="step",
                   choices=("step", "split", "gradients", "update"))
    p.add_argument("--layout", default="recipe",
                   help="optimizer.layout (recipe, flat or per_leaf): the Adam moments as one "
                        "vector or per leaf")
    p.add_argument("--phases", type=int, default=0, help="print the top N compile phases")
    p.add_argument("--code-sizes", type=int, default=0, metavar="N",
                   help="dump the program and print its LLVM IR by module and the N largest "
                        "compile units (one preset)")
    p.add_argument("--counted", action="store_true",
                   help="the float32 step with every scan unrolled, and the bytes it moves")
    p.add_argument("--forms", default="lean",
                   help="lean (the model as built) and/or reference (the formulation the "
                        "lean step replaced), comma-separated: a row each")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    presets = [preset for preset in args.presets.split(",") if preset]
    forms = [form for form in args.forms.split(",") if form]
    if any(form not in ("lean", "reference") for form in forms) or not forms:
        p.error(f"--forms: {args.forms!r}; expected lean and/or reference")
    if args.code_sizes and len(presets) != 1:
        p.error("--code-sizes: one preset at a time (XLA dumps every program of the process)")
    dump = tempfile.TemporaryDirectory() if args.code_sizes else None
    _deviceless_env(dump and dump.name)  # before JAX starts: the checks below import it
    from step_counts import LAYOUT_CHOICES

    from radblur_jax.atomic_io import write_json_atomic
    if args.layout not in LAYOUT_CHOICES:
        p.error(f"--layout: {args.layout!r}; expected one of {', '.join(LAYOUT_CHOICES)}")
    try:
        rows = [compile_for_h100(preset, args.batch, args.size, args.program, args.phases,
                                 args.layout, dump and dump.name, args.code_sizes,
                                 args.counted, form)
                for preset in presets for form in forms]
    finally:
        if dump:
            dump.cleanup()
    if args.counted:
        print_counted(rows)
    else:
        print("\n| preset | program | form | optimizer layout | batch x crop | fusions | "
              "lowering s | compile s | compile CPU s |\n" + "|---" * 9 + "|")
        for r in rows:
            print(f"| {r['preset']} | {r['program']} | {r['form']} | {r['layout']} | "
                  f"{r['batch']} x {r['size']} | {r['fusions']} | {r['lower_s']:.1f} "
                  f"| {r['compile_s']:.1f} | {r['compile_cpu_s']:.1f} |")
    if args.json:
        write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
