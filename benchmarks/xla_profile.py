"""Where a compiled XLA:CPU program spends its time: op times from a `jax.profiler` trace,
grouped by op kind and by the model code that emitted them.

    rows = profile_compiled(compiled, run_once)   # run_once() executes `compiled` once
    print_profile(rows)

Each XLA:CPU op (fusion, matmul, FFT, ...) appears in the trace under its HLO instruction name;
the compiled HLO text maps that name to the jax name stack of the code that emitted it
(`metadata={op_name="jit(step)/transpose(jvp(RADBlur))/decoder/.../blocks_3/conv2/mul"}`).
`module_of` turns that stack into `direction: module path` (forward or backward, Flax module
names without the transformation wrappers), so a row reads e.g.
`backward: decoder/blocks_3/conv2`.

    compiled, phases = compile_phases(lowered.compile)   # where a compile's time goes
    print_compile_phases(phases)

A compile's trace holds XLA's spans (HLO passes, code generation, on a GPU autotuning and
PTX compilation) on the threads that ran them, on any backend.
"""
from __future__ import annotations

import collections
import os
import re
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

import jax

_WRAPPER = re.compile(r"^(jvp|transpose|vmap|jit|pjit|remat|checkpoint|custom_jvp_call|"
                      r"custom_vjp_call|closed_call|while|body|cond|branch_\d+_fun|"
                      r"dynamic_index_in_dim|_\w+)(\(|$)")
T = TypeVar("T")


def container_ops(hlo_text: str) -> set[str]:
    """Names of a compiled module's `while`, `conditional` and `call` instructions: ops that
    run other computations, whose ops the trace times on their own."""
    return set(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? (?:while|conditional|call)\(",
                          hlo_text, re.M))


def op_names(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> jax name stack (`op_name` metadata) of a compiled module."""
    names = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"",
                     line)
        if m:
            names[m.group(1)] = m.group(2)
    return names


def module_of(op_name: str, depth: int = 3) -> str:
    """`"backward: decoder/blocks_3/conv2"` from a name stack: the direction (any `transpose(`
    wrapper = backward) and the first `depth` Flax module names, wrappers, methods
    (`SubDecoder.coupling`) and the primitive itself dropped."""
    parts = op_name.split("/")[1:]  # drop jit(<function>)
    direction = "backward" if any(p.startswith("transpose(") for p in parts) else "forward"
    modules = [p for p in parts[:-1] if not _WRAPPER.match(p) and "." not in p
               and "," not in p and "->" not in p]
    return f"{direction}: {'/'.join(modules[:depth]) or '(top level)'}"



def grouped(ops: list[dict], key: str, value: str, total: float) -> list[dict]:
    """`ops` summed by `op[key]`, largest first: `[{name, <value>, share}]`."""
    sums: dict[str, float] = collections.defaultdict(float)
    for r in ops:
        sums[r[key]] += r[value]
    return [{"name": k, value: v, "share": v / total}
            for k, v in sorted(sums.items(), key=lambda kv: -kv[1])]

def _traced(run: Callable[[], T]) -> tuple[T, jax.profiler.ProfileData]:
    """`run()` under `jax.profiler`: its result and the trace."""
    with tempfile.TemporaryDirectory() as logdir:
        jax.profiler.start_trace(logdir)
        try:
            result = run()
        finally:
            jax.profiler.stop_trace()
        paths = [os.path.join(d, f) for d, _, fs in os.walk(logdir) for f in fs
                 if f.endswith(".xplane.pb")]
        if not paths:
            raise RuntimeError("jax.profiler wrote no .xplane.pb trace")
        return result, jax.profiler.ProfileData.from_file(paths[0])


def trace_op_times(run_once: Callable[[], None]) -> dict[str, float]:
    """Runs `run_once()` under `jax.profiler`; XLA:CPU op name -> milliseconds (all threads)."""
    _, data = _traced(run_once)
    ops: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if line.name == "python":  # Python-side spans, not XLA ops
                continue
            for event in line.events:
                # Skip runtime spans (ThunkExecutor::Execute, thread-pool waits) around ops.
                if event.name.startswith("end: ") or "::" in event.name:
                    continue
                ops[event.name] += event.duration_ns / 1e6
    return dict(ops)


def compile_phases(compile_fn: Callable[[], T]) -> tuple[T, dict]:
    """Runs `compile_fn()` (an XLA compile: `lowered.compile()`) under `jax.profiler` and
    returns its result and where the compile's time went: `{"wall_ms", "phases"}`, phases
    `{name, ms, count, threads}` summed over the host threads' spans of one name (XLA's
    compiler passes, code generation, autotuning, ...; Python frames left out), largest first.
    Spans nest (a pipeline holds its passes), so the rows overlap: read each against
    `wall_ms`, and a phase run on many threads can exceed it."""
    t0 = time.perf_counter()
    result, data = _traced(compile_fn)
    wall_ms = (time.perf_counter() - t0) * 1e3
    ms: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.Counter()
    threads: dict[str, set] = collections.defaultdict(set)
    for plane in data.planes:
        if not plane.name.startswith("/host:"):
            continue
        for line in plane.lines:
            for event in line.events:
                if event.name.startswith("$"):  # Python frames
                    continue
                ms[event.name] += event.duration_ns / 1e6
                count[event.name] += 1
                threads[event.name].add(line.name)
    phases = [dict(name=n, ms=v, count=count[n], threads=len(threads[n]))
              for n, v in sorted(ms.items(), key=lambda kv: -kv[1])]
    return result, dict(wall_ms=wall_ms, phases=phases)


def fusions_by_module(hlo_texts: list[str], depth: int = 1) -> list[dict]:
    """Fusions of optimized HLO modules counted by the code that emitted them
    (`module_of(op_name, depth)`; `(no metadata)` where XLA left none), largest first:
    `[{name, count}]`. A fusion is one generated kernel on a GPU, so this is where a compile's
    code generation goes. Top-level ops of a train step (`forward: (top level)`) are the
    optimiser update and EMA, applied leaf by leaf."""
    counts: dict[str, int] = collections.Counter()
    for text in hlo_texts:
        counts.update(fusion_modules(text, depth).values())
    return [dict(name=n, count=c) for n, c in counts.most_common()]


def fusion_modules(hlo_text: str, depth: int = 1) -> dict[str, str]:
    """Fusion instruction name -> the code that emitted it (`module_of(op_name, depth)`, or
    `(no metadata)`), for every fusion of an optimized HLO module's text, multi-output fusions
    (a tuple shape) included."""
    names = op_names(hlo_text)
    fusions = re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) fusion\(", hlo_text,
                         re.M)
    return {f: module_of(names[f], depth) if f in names else "(no metadata)" for f in fusions}


def print_compile_phases(result: dict, top: int = 30) -> None:
    """Markdown tables of `compile_phases`' top rows and, where given (`result["fusions"]`),
    the program's fusions by module."""
    print(f"\ncompile phases: {result['wall_ms'] / 1e3:.1f} s of wall time; spans summed over "
          f"threads, nested spans overlap")
    print("\n| phase | s | spans | threads |\n|---|---|---|---|")
    for r in result["phases"][:top]:
        print(f"| {r['name'][:100]} | {r['ms'] / 1e3:.2f} | {r['count']} | {r['threads']} |")
    if result.get("fusions"):
        print(f"\n{sum(r['count'] for r in result['fusions'])} fusions in the optimized "
              f"program(s)\n\n| emitted by | fusions |\n|---|---|")
        for r in result["fusions"][:top]:
            print(f"| {r['name']} | {r['count']} |")


def profile_compiled(compiled, run_once: Callable[[], None], depth: int = 3) -> dict:
    """Op times of one `run_once()` of `compiled` (one executable or a sequence of them):
    `{"total_ms", "ops", "kinds", "modules"}`, each list sorted by time, rows
    `{name, ms, share}` (ops also carry `kind` and `module`). A loop or conditional is left
    out: its span holds its body's ops, which are timed on their own (counted twice
    otherwise)."""
    programs = compiled if isinstance(compiled, (list, tuple)) else (compiled,)
    names, containers = {}, set()
    for program in programs:
        text = program.as_text()
        names.update(op_names(text))
        containers |= container_ops(text)
    times = {n: ms for n, ms in trace_op_times(run_once).items() if n not in containers}
    total = sum(times.values()) or 1.0
    ops = [dict(name=n, kind=n.split(".")[0].rstrip("0123456789_-"),
                module=module_of(names[n], depth) if n in names else "(unattributed)",
                ms=ms, share=ms / total) for n, ms in times.items()]
    ops.sort(key=lambda r: -r["ms"])

    return dict(total_ms=total, ops=ops, kinds=grouped(ops, "kind", "ms", total),
                modules=grouped(ops, "module", "ms", total))


def profile_summary(profile: dict, top: int = 40) -> dict:
    """`profile_compiled`'s result cut to its `top` modules and ops (20 op kinds), for JSON."""
    return dict(total_ms=profile["total_ms"], modules=profile["modules"][:top],
                kinds=profile["kinds"][:20], ops=profile["ops"][:top])


def print_profile(profile: dict, top: int = 25, what: str = "step") -> None:
    """Markdown tables: by module, by op kind, and the `top` single ops of one `what`."""
    print(f"\nper-op profile: one {what}, {profile['total_ms']:.0f} ms of op time (all threads)")
    for title, rows, limit in (("module", profile["modules"], top), ("op kind",
                               profile["kinds"], 12), ("op", profile["ops"], top)):
        print(f"\n| {title} | ms | share |" + (" module |" if title == "op" else ""))
        print("|---|---|---|" + ("---|" if title == "op" else ""))
        for r in rows[:limit]:
            extra = f" {r['module']} |" if title == "op" else ""
            print(f"| {r['name']} | {r['ms']:.1f} | {100 * r['share']:.1f}% |{extra}")
