"""The lean accelerator step's gradients against the formulations it is checked with (issue 22).

    python benchmarks/lean_gradients.py [--presets tiny,s] [--draws 2] [--height 40] \
        [--width 56] [--json out.json]

Per preset, the RADBlur loss (the deblur loss of the restored image plus 0.1 x the mean
disparity, so the DPT head counts) and its gradient, float32, in four formulations with the
same params:

  lean                 `conv_impl="lax"`, reversible decoder: the accelerator step as built;
  reference            the formulation the lean step replaced (`reference_forms.REFERENCE`:
                       every convolution one `lax.conv_general_dilated` on concatenated
                       channels, LayerNorm by autodiff, the FFT branch channels-last),
                       reversible decoder: the step as it was trained before;
  reference, autodiff  the same forms with plain autodiff through the decoder (no inversion);
  fast                 the CPU's forms (`conv_impl="fast"`), reversible.

Each draw takes fresh params (the init moved by 0.05 x a standard normal, so the residual
scales that start at zero count) and a fresh non-square image pair; each formulation's
gradient compiles once per preset (image and params are arguments), without LLVM's
optimisations: the comparison is of formulations compiled alike. A row gives the relative
error ||lean - other|| / ||other|| of the loss, the outputs, the whole gradient and each part's
(`depth`: ViT + DPT, `stem`, `decoder`), and the leaf with the largest error; and how many
terms of the L1 pixel loss sit at its kink (|restored - sharp| < 1e-6), where rounding picks
the sign of their gradient: a draw with one differs between formulations by far more than
their rounding. `tests/test_lean_step.py` asserts the bounds for `tiny` with these functions.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from reference_forms import REFERENCE  # noqa: E402

from radblur_jax.atomic_io import write_json_atomic  # noqa: E402
from radblur_jax.compile_options import init_compiler_options  # noqa: E402
from radblur_jax.models.configs import radblur_config  # noqa: E402
from radblur_jax.models.radblur import RADBlur, build_radblur, init_radblur  # noqa: E402
from radblur_jax.train.losses import deblur_loss  # noqa: E402

FORMS = ("lean", "reference", "reference, autodiff", "fast")
PARTS = ("depth", "stem", "decoder")
# The gradients compile without LLVM's optimisations (shorter compiles); every form alike.
UNOPTIMISED = {"xla_backend_optimization_level": 0}
# |restored - sharp| below this counts as at the L1 loss's kink (float32 rounding of values ~1).
KINK_TOL = 1e-6


def build_forms(preset: str) -> dict[str, RADBlur]:
    """The preset's RADBlur in each formulation of `FORMS` (one param tree for all)."""
    models = {}
    for form, impl in (("lean", "lax"), ("fast", "fast")):
        cfg = radblur_config(preset)
        cfg.conv_impl = impl
        models[form] = build_radblur(cfg)
    for form, reversible in (("reference", True), ("reference, autodiff", False)):
        cfg = radblur_config(preset)
        cfg.decoder.reversible = reversible
        models[form] = RADBlur(cfg, REFERENCE)
    return models


def draw(model: RADBlur, seed: int, height: int, width: int) -> tuple[dict, tuple]:
    """Params (the init moved by 0.05 x N(0, 1)) and a (blurry, sharp) pair of (2, H, W, 3)."""
    rng = np.random.default_rng(seed)
    params = init_radblur(model, jax.random.key(seed), compiler_options=init_compiler_options())
    params = jax.tree.map(
        lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), params)
    sharp = rng.random((2, height, width, 3), np.float32)
    blurry = np.clip(sharp + 0.05 * rng.standard_normal(sharp.shape), 0, 1).astype(np.float32)
    return params, (jnp.asarray(blurry), jnp.asarray(sharp))


def gradient_fn(model: RADBlur) -> Callable:
    """`(params, blurry, sharp) -> ((loss, outputs), grads)`, jitted."""
    def loss_fn(params, blurry, sharp):
        out = model.apply({"params": params}, blurry)
        return deblur_loss(out.restored, sharp) + 0.1 * jnp.mean(out.disparity), out
    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True), compiler_options=UNOPTIMISED)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compare(lean: tuple, other: tuple) -> dict:
    """Relative errors of a lean `((loss, outputs), grads)` against another formulation's."""
    (loss, out), grads = lean
    (want_loss, want_out), want = other
    leaves = jax.tree_util.tree_leaves_with_path(want)
    got_leaves = jax.tree_util.tree_leaves(grads)
    errors = {jax.tree_util.keystr(path, simple=True, separator="/"): rel_err(g, w)
              for (path, w), g in zip(leaves, got_leaves) if np.any(w)}
    worst = max(errors, key=errors.get)
    row = {"loss": rel_err(loss, want_loss),
           "outputs": max(rel_err(g, w) for g, w in zip(out, want_out)),
           "gradient": rel_err(ravel_pytree(grads)[0], ravel_pytree(want)[0]),
           "largest_leaf": worst, "largest_leaf_err": errors[worst]}
    for part in PARTS:
        got_part, want_part = ravel_pytree(grads[part])[0], ravel_pytree(want[part])[0]
        row[f"{part}_norm"] = float(np.linalg.norm(want_part))
        row[part] = rel_err(got_part, want_part)
    return row


def near_kinks(restored: np.ndarray, sharp: np.ndarray, tol: float = KINK_TOL) -> int:
    """How many terms of the L1 pixel loss sit within `tol` of its kink (|r - s| < tol): there
    the sign of the difference, and with it that term's gradient, is decided by rounding."""
    return int(np.sum(np.abs(np.asarray(restored) - np.asarray(sharp)) < tol))


def measure(preset: str, draws: int, height: int, width: int,
            against: Sequence[str] = FORMS[1:]) -> list[dict]:
    """One row per draw (seeds 0 .. draws - 1) and formulation in `against`: the lean
    gradient's errors against it (`compare`) and the L1 terms at the kink (`near_kinks`)."""
    models = build_forms(preset)
    fns = {form: gradient_fn(models[form]) for form in ("lean", *against)}
    rows = []
    for seed in range(draws):
        params, (blurry, sharp) = draw(models["lean"], seed, height, width)
        lean = jax.device_get(fns["lean"](params, blurry, sharp))
        kinks = near_kinks(lean[0][1].restored, sharp)
        for form in against:
            other = jax.device_get(fns[form](params, blurry, sharp))
            rows.append({"preset": preset, "draw": seed, "against": form, "height": height,
                         "width": width, "near_kinks": kinks, **compare(lean, other)})
    return rows


def print_table(rows: list[dict]) -> None:
    """The rows as a markdown table."""
    print("| preset | draw | lean against | L1 terms at the kink | loss | outputs | gradient "
          "| depth | stem | decoder | largest leaf |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[k]:.1e}" for k in ("loss", "outputs", "gradient", *PARTS)]
        print(f"| {r['preset']} | {r['draw']} | {r['against']} | {r['near_kinks']} "
              f"| {' | '.join(cells)} | {r['largest_leaf_err']:.1e} `{r['largest_leaf']}` |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,s")
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--height", type=int, default=40)
    parser.add_argument("--width", type=int, default=56)
    parser.add_argument("--json", help="write the rows as JSON to this path")
    args = parser.parse_args()
    rows = []
    for preset in args.presets.split(","):
        rows += measure(preset, args.draws, args.height, args.width)
        print_table([r for r in rows if r["preset"] == preset])
    if args.json:
        write_json_atomic(args.json, {"device": jax.devices()[0].device_kind,
                                      "jax": jax.__version__, "rows": rows})


if __name__ == "__main__":
    main()
