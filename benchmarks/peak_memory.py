"""What is live at the train step's memory peak, by the model code that made it.

    python benchmarks/peak_memory.py --presets s --dtype float32 --conv_impl lax --size 256 \
        --batch 4 [--no_split] [--remat recipe|none|encoder|stem|both] [--top 20] \
        [--json out.json]

Compiles the deblur train step as training compiles it (the preset's recipe, loops kept;
gradients and update split on a CPU unless `--no_split`), from abstract shapes (nothing runs),
with XLA's dumps on, and reads the buffer assignment's live-range report: the values live at
the peak of the largest program, each named by the `op_name` of the instruction that made it.
The report counts values before XLA lets an op write its result over a dying operand, so its
peak can exceed the memory analysis's `temp_size_in_bytes` (both are printed): read shares.
They are grouped by direction and Flax module path (`xla_profile.module_of`: "forward: stem",
"backward: decoder/blocks_3", ...); the program's arguments (params, optimiser state, batch)
are reported apart, since XLA's `temp_size_in_bytes` leaves them out. Per image, in GiB.

`--remat` sets the model's remat switches as `train_step.py --remat` does (`encoder`:
`model.encoder.remat`, `stem`: `model.decoder.stem_remat`, `both`, `none`; models/remat.py);
the default keeps the preset's recipe.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

_ENTRY = re.compile(r"^(?P<indent>[\s│]*)[├└]── (?P<name>.*?) "
                    r"\([0-9.]+%, total: (?P<bytes>[0-9 ]+) bytes")
_PEAK = "Stack trace breakdown for peak usage:"
# An HLO instruction's name (`copy.12`, `wide.arg_tuple.5{3}`); a program argument is named by
# its argument path instead (`state.params['stem']...`, `kernel`).
_INSTRUCTION = re.compile(r"^[\w.\-]+\.\d+(\{[\d,]*\})?$")


def peak_entries(report: str) -> list[tuple[str, int]]:
    """`(name, bytes)` of every buffer live at the peak in one live-range report: the leaves
    of its peak breakdown, each named by its nearest entry that carries an `op_name` path
    (a loop's carried buffers, copies and other unnamed values go to their enclosing loop)."""
    lines = report[report.index(_PEAK):].splitlines()[1:]
    parsed = []
    for line in lines:
        m = _ENTRY.match(line)
        if m:
            parsed.append((len(m.group("indent")), m.group("name"),
                           int(m.group("bytes").replace(" ", ""))))
    leaves, path = [], []
    for i, (depth, name, size) in enumerate(parsed):
        while path and path[-1][0] >= depth:
            path.pop()
        path.append((depth, name))
        if i + 1 < len(parsed) and parsed[i + 1][0] > depth:
            continue  # an inner node: its leaves follow
        named = next((n for _, n in reversed(path) if "/" in n), name)
        leaves.append((named, size))
    return leaves


def group(entries: list[tuple[str, int]], depth: int = 2) -> dict:
    """Peak buffers summed by module: `{"arguments", "temporaries", "modules": [(name,
    bytes)]}` (arguments: the program's inputs, e.g. params, optimiser state and batch)."""
    from xla_profile import module_of
    sums: dict[str, int] = collections.defaultdict(int)
    arguments = 0
    for name, size in entries:
        if "/" not in name and not _INSTRUCTION.match(name):
            arguments += size
            continue
        key = module_of(name, depth) if "/" in name else f"(no source: {name.split('.')[0]})"
        sums[key] += size
    modules = sorted(sums.items(), key=lambda kv: -kv[1])
    return {"arguments": arguments, "temporaries": sum(sums.values()), "modules": modules}


def live_range_reports(dump_dir: str) -> list[str]:
    """The live-range reports XLA wrote for the step's programs, largest peak first."""
    reports = [open(p).read() for p in glob.glob(os.path.join(dump_dir, "*live-range.txt"))]
    reports = [r for r in reports if _PEAK in r]
    size = lambda r: int(r[r.index(_PEAK) + len(_PEAK):].split("bytes")[0].replace(" ", ""))
    return sorted(reports, key=size, reverse=True)


def _clear(directory: str) -> None:
    for path in glob.glob(os.path.join(directory, "*")):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="s")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--conv_impl", default="lax", choices=("auto", "lax", "fast"))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--no_split", action="store_true", help="one program (as on accelerators)")
    p.add_argument("--remat", default="recipe",
                   choices=("recipe", "none", "encoder", "stem", "both"),
                   help="blocks that recompute their activations in the backward "
                        "(as train_step.py's --remat; default: the preset's recipe)")
    p.add_argument("--depth", type=int, default=2, help="module path depth of the groups")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    dump_dir = tempfile.mkdtemp(prefix="peak_memory_")
    # Before the backend starts: XLA reads its flags once. Only the step's programs are dumped.
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [
        os.environ.get("XLA_FLAGS"), f"--xla_dump_to={dump_dir}",
        "--xla_dump_hlo_module_re=.*(compose|gradients|update).*"]))
    import jax
    from step_counts import abstract_inputs, bench_config, compile_step, remat_name

    from radblur_jax.atomic_io import write_json_atomic
    from radblur_jax.train.tasks import DeblurTask
    rows = []
    try:
        for preset in [s for s in args.presets.split(",") if s]:
            config = bench_config(preset, args.dtype, args.conv_impl, args.batch, args.size,
                                  remat=args.remat)
            task = DeblurTask(config)
            state, images, optimizers = abstract_inputs(task, args.batch, args.size)
            _clear(dump_dir)
            _, executables, *_ = compile_step(
                task.train_step(optimizers, split=not args.no_split), state, images)
            largest = max(executables, key=lambda e: e.memory_analysis().temp_size_in_bytes)
            temp = largest.memory_analysis().temp_size_in_bytes
            output = largest.memory_analysis().output_size_in_bytes
            reports = live_range_reports(dump_dir)
            if not reports:
                raise SystemExit(f"peak_memory: XLA wrote no live-range report to {dump_dir} "
                                 f"on {jax.default_backend()}")
            result = group(peak_entries(reports[0]), args.depth)
            per_image = lambda b: b / args.batch / 2**30
            rows.append({"preset": preset, "dtype": args.dtype, "conv_impl": args.conv_impl,
                         "size": args.size, "batch": args.batch, "split": not args.no_split,
                         "remat": remat_name(config),
                         "device": jax.devices()[0].device_kind,
                         "temp_bytes_per_image": temp / args.batch,
                         "output_bytes_per_image": output / args.batch,
                         "peak_live_per_image": result["temporaries"] / args.batch,
                         "peak_arguments_per_image": result["arguments"] / args.batch,
                         "modules": [{"name": n, "bytes_per_image": b / args.batch}
                                     for n, b in result["modules"]]})
            print(f"\n# {preset} {args.dtype} {args.conv_impl}, batch {args.batch}, "
                  f"{args.size}x{args.size}, GiB per image: memory analysis temporaries "
                  f"{per_image(temp):.3f}, outputs {per_image(output):.3f}; live at the peak "
                  f"{per_image(result['temporaries']):.3f} (temporaries and outputs) + "
                  f"{per_image(result['arguments']):.3f} (arguments)")
            print("\n| live at the peak | GiB/img | share |\n|---|---|---|")
            for name, size in result["modules"][:args.top]:
                print(f"| {name} | {per_image(size):.3f} | "
                      f"{100 * size / result['temporaries']:.1f}% |")
    finally:
        shutil.rmtree(dump_dir, ignore_errors=True)
    if args.json:
        write_json_atomic(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
