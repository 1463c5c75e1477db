"""Where a compiled XLA program's memory traffic goes: bytes per op, grouped by the model code
that emitted each op.

    rows = op_bytes(compiled.as_text())      # one row per executed HLO instruction
    table = bytes_breakdown([compiled_a, compiled_b])

XLA's cost analysis gives one total (`bytes accessed`), not a per-op list. Here each top-level
instruction of the optimized HLO (a fusion, a library call, a copy; the ops inside a fusion
stay in registers and caches) is charged its operands' and its result's bytes, read off the
shapes in the HLO text; parameters, constants, tuples, get-tuple-element and bitcasts move
nothing. A fusion operand that the fused computation only slices (through bitcasts) is charged
the slices' bytes, as the cost analysis charges it; where the cost analysis knows of other
partial reads (an in-place dynamic-update-slice) this estimate is larger. `bytes_breakdown`
therefore also reports the sum against the cost analysis's total. With `elementwise=True` the
slices are also found through element-wise ops (`v[:n] / d` computed as `(v / d)[:n]`, the
form XLA's GPU fusions take): a fused kernel computes only the elements it writes, so it reads
only those; the cost analysis charges the whole operand there (the GPU count,
`gpu_compile.py`, has no cost analysis to match).

Instructions inside a `while` body are counted once, as the cost analysis counts them: unroll a
loop to see every iteration. Ops are grouped by `op_module` (forward/backward and the Flax
module path of the `op_name` metadata; the jitted function for ops outside differentiation)
and by kind (the instruction name without its number: `transpose_copy_fusion`, `ynn_fusion`,
`copy`, ...).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

from xla_profile import grouped, module_of

# Element sizes in bytes; sub-byte types rounded up as XLA:CPU stores them.
_ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
                  "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
                  "c128": 16, "s4": 1, "u4": 1, "s2": 1, "u2": 1}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9]\w*)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\) -> .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = ")
_NESTED = re.compile(r"\b(calls|to_apply|called_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_OP_NAME = re.compile(r"op_name=\"([^\"]+)\"")
# Opcodes that move no data (pointers, views) or whose cost is that of their computations.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
         "conditional", "call", "after-all", "partition-id", "replica-id"}


def _arrays(shape: str) -> list[tuple[int, int]]:
    """`(element bytes, elements)` of each array of an HLO shape string (`f32[4,64]{1,0}` or a
    tuple of them; tokens left out)."""
    return [(_ELEMENT_BYTES.get(dtype, 1 if dtype.startswith("f8") else 4),
             math.prod(int(d) for d in dims.split(",") if d))
            for dtype, dims in _ARRAY.findall(shape) if dtype != "token"]


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string (`f32[4,64]{1,0}`, a tuple of them, `token[]` = 0)."""
    return sum(size * count for size, count in _arrays(shape))


def _elements(shape: str) -> int:
    return sum(count for _, count in _arrays(shape))


def _closing(text: str, depth: int) -> int:
    """Index of the parenthesis closing `depth` open ones in `text` (len(text) if none)."""
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if depth == 0:
            return i
    return len(text)


def _split_instruction(rest: str) -> tuple[str, str, str, str]:
    """`(shape, opcode, operands, attributes)` of the text after `name = `."""
    if rest.startswith("("):  # tuple shape: up to its matching parenthesis
        end = _closing(rest, 0)
        shape, rest = rest[:end + 1], rest[end + 2:]
    else:
        shape, _, rest = rest.partition(" ")
    opcode, _, rest = rest.partition("(")
    end = _closing(rest, 1)
    return shape, opcode, rest[:end], rest[end + 1:]


_SLICES = {"slice", "dynamic-slice"}
# Ops whose result element i depends on element i of each operand alone.
_ELEMENTWISE = {"abs", "add", "and", "atan2", "cbrt", "ceil", "clamp", "compare", "convert",
                "cosine", "divide", "erf", "exponential", "exponential-minus-one", "floor",
                "is-finite", "log", "log-plus-one", "logistic", "maximum", "minimum",
                "multiply", "negate", "not", "or", "power", "remainder", "round-nearest-afz",
                "round-nearest-even", "rsqrt", "select", "sign", "sine", "sqrt", "subtract",
                "tan", "tanh", "xor"}
_PARAMETER_INDEX = re.compile(r"^\s*(\d+)")


def _sliced_reads(instructions: list[tuple[str, str, str, str, str]],
                  elementwise: bool = False) -> dict[int, int]:
    """Parameter index -> bytes read, for the parameters of a fused computation whose every
    use (looking through bitcasts, and through element-wise ops of the same number of elements
    with `elementwise`) is a slice: the slices' elements at the parameter's element size."""
    users: dict[str, list[tuple[str, str, str]]] = {}
    for name, shape, opcode, operands, _ in instructions:
        for operand in re.findall(r"%([\w.\-]+)", operands):
            users.setdefault(operand, []).append((name, shape, opcode))

    def read(value: str, elements: int) -> int | None:
        """Elements of `value` (`elements` in all) its uses read, or None for all of them."""
        total = 0
        for name, shape, opcode in users.get(value, []):
            see_through = opcode == "bitcast" or (
                elementwise and opcode in _ELEMENTWISE and _elements(shape) == elements)
            if see_through:
                inner = read(name, elements)
                if inner is None:
                    return None
                total += inner
            elif opcode in _SLICES:
                total += _elements(shape)
            else:
                return None
        return min(total, elements) if users.get(value) else None

    reads = {}
    for name, shape, opcode, operands, _ in instructions:
        index = _PARAMETER_INDEX.match(operands) if opcode == "parameter" else None
        if index is None or not (elements := _elements(shape)):
            continue
        if (sliced := read(name, elements)) is not None:
            reads[int(index.group(1))] = shape_bytes(shape) * sliced // elements
    return reads


def op_bytes(hlo_text: str, elementwise: bool = False) -> list[dict]:
    """One row `{name, opcode, kind, op_name, bytes}` per executed instruction of an optimized
    HLO module's text (`compiled.as_text()`): those of the entry computation and of loop bodies,
    conditions and branches, not those inside fusions or reductions' `to_apply` computations.
    `elementwise`: slices are found through element-wise ops too (module docstring)."""
    shapes: dict[str, str] = {}
    computations: dict[str, list[tuple[str, str, str, str, str]]] = {}
    nested: set[str] = set()
    current = None
    for line in hlo_text.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            continue
        m = _INSTRUCTION.match(line)
        if not m or current is None:
            continue
        name = m.group(1)
        shape, opcode, operands, attributes = _split_instruction(line[m.end():])
        shapes[name] = shape
        current.append((name, shape, opcode, operands, attributes))
        for key, called in _NESTED.findall(attributes):
            if key != "to_apply" or opcode != "call":
                nested.update(c.strip(" {}%") for c in called.split(","))
    rows = []
    for comp, instructions in computations.items():
        if comp in nested:
            continue
        for name, shape, opcode, operands, attributes in instructions:
            if opcode in _FREE:
                continue
            fused = re.search(r"\bcalls=%?([\w.\-]+)", attributes) if opcode == "fusion" else None
            sliced = (_sliced_reads(computations.get(fused.group(1), []), elementwise)
                      if fused else {})
            read = sum(min(sliced.get(i, full), full) for i, full in enumerate(
                shape_bytes(shapes.get(o, "")) for o in re.findall(r"%([\w.\-]+)", operands)))
            op_name = _OP_NAME.search(attributes)
            rows.append(dict(name=name, opcode=opcode, kind=name.rstrip("0123456789.-_"),
                             op_name=op_name.group(1) if op_name else "",
                             bytes=read + shape_bytes(shape)))
    return rows


def op_module(op_name: str, depth: int = 3) -> str:
    """`xla_profile.module_of` for ops of the differentiated model (`"backward: decoder/..."`);
    an op outside differentiation (the optimiser update, metrics) is labelled by the jitted
    function instead of a direction (`"apply_gradients: (top level)"`)."""
    if not op_name:
        return "(no metadata)"
    module = module_of(op_name, depth)
    if "jvp(" in op_name or "transpose(" in op_name:
        return module
    function = re.match(r"jit\((\w+)\)", op_name)
    return f"{function.group(1) if function else '?'}: {module.split(': ', 1)[1]}"


def bytes_breakdown(programs: Sequence, depth: int = 3) -> dict:
    """Per-op bytes of compiled programs (executables with `as_text()` and `cost_analysis()`):
    `{"estimated", "cost_analysis", "modules", "kinds", "ops"}`, each list sorted by bytes,
    rows `{name, bytes, share}` (ops also carry `kind` and `module`); shares of `estimated`."""
    ops, reported = [], 0.0
    for program in programs:
        for row in op_bytes(program.as_text()):
            ops.append(dict(row, module=op_module(row["op_name"], depth)))
        cost = program.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        reported += float(cost.get("bytes accessed", 0.0))
    total = float(sum(r["bytes"] for r in ops)) or 1.0
    for r in ops:
        r["share"] = r["bytes"] / total
    ops.sort(key=lambda r: -r["bytes"])

    return dict(estimated=total, cost_analysis=reported,
                modules=grouped(ops, "module", "bytes", total),
                kinds=grouped(ops, "kind", "bytes", total), ops=ops)


def print_bytes_breakdown(breakdown: dict, top: int = 25, per: int = 1) -> None:
    """Markdown tables by module, by op kind and the `top` single ops; MiB divided by `per`
    (the batch size, for per-image figures)."""
    mib = 2.0 ** 20 * per
    print(f"\nbytes per op: estimated {breakdown['estimated'] / mib:.1f} MiB"
          f"{' per image' if per > 1 else ''} (XLA cost analysis: "
          f"{breakdown['cost_analysis'] / mib:.1f})")
    for title, rows, limit in (("module", breakdown["modules"], top),
                               ("op kind", breakdown["kinds"], 12),
                               ("op", breakdown["ops"], top)):
        print(f"\n| {title} | MiB | share |" + (" module |" if title == "op" else ""))
        print("|---|---|---|" + ("---|" if title == "op" else ""))
        for r in rows[:limit]:
            extra = f" {r['module']} |" if title == "op" else ""
            print(f"| {r['name']} | {r['bytes'] / mib:.2f} | {100 * r['share']:.1f}% |{extra}")
