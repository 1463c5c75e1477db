"""The lean accelerator formulation (`conv_impl="lax"`, reversible decoder) has the gradients
of the formulation it replaced, computed here by plain autodiff: `lax.conv_general_dilated`
on concatenated channels for every convolution (then split), flax's LayerNorm formula and the
FFT branch channels-last; and of the CPU's `fast` forms. One lean gradient serves both
comparisons (a whole-network gradient costs tens of seconds of compile). The pre-lean
formulation is `benchmarks/reference_forms.py`'s `REFERENCE` backend."""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.models.configs import radblur_config
from radblur_jax.models.radblur import RADBlur, build_radblur, init_radblur
from radblur_jax.train.losses import deblur_loss

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from reference_forms import REFERENCE  # noqa: E402

# The gradients compile without LLVM's optimisations, which shortens the test's compiles: the
# comparison is of formulations, each compiled the same way.
UNOPTIMISED = {"xla_backend_optimization_level": 0}


@pytest.mark.slow
def test_tiny_gradients_agree_across_formulations():
    """The `tiny` RADBlur's loss gradient (stem, ViT patch embedding, DPT, ADA, decoder) three
    ways, from one lean `lax` gradient: the lean step (reversible decoder) equals the
    pre-lean formulation by plain autodiff, and the CPU's `fast` forms (reversible) equal the
    lean step in outputs and gradients. (Reversible backprop equals autodiff with the fast
    forms: test_reversible.py.)"""
    rng = np.random.default_rng(0)
    sharp = rng.random((2, 40, 56, 3), np.float32)  # non-square, padded inside to 48x64 / 56x70
    blurry = jnp.asarray(np.clip(sharp + 0.05 * rng.standard_normal(sharp.shape), 0, 1)
                         .astype(np.float32))
    models = {}
    for impl in ("lax", "fast"):
        cfg = radblur_config("tiny")
        cfg.conv_impl = impl
        models[impl] = build_radblur(cfg)
    assert models["lax"].backend.spectral_channels_first
    ref_cfg = radblur_config("tiny")
    ref_cfg.decoder.reversible = False
    models["reference"] = RADBlur(ref_cfg, REFERENCE)
    params = init_radblur(models["lax"], jax.random.key(0),
                          compiler_options=init_compiler_options())
    abstract = jax.eval_shape(models["reference"].init, jax.random.key(0), blurry)["params"]
    assert jax.tree.map(jnp.shape, abstract) == jax.tree.map(jnp.shape, params)
    # Non-zero residual scales (beta, gamma, ADA scale start at 0) so every branch counts.
    params = jax.tree.map(
        lambda p: p + 0.05 * rng.standard_normal(p.shape).astype(np.float32), params)

    def run(model):
        def loss_fn(p):
            out = model.apply({"params": p}, blurry)
            loss = deblur_loss(out.restored, jnp.asarray(sharp)) + 0.1 * jnp.mean(out.disparity)
            return loss, out
        (loss, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                                     compiler_options=UNOPTIMISED)(params)
        return loss, out, grads

    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
    lean_loss, lean_out, lean_grads = run(models["lax"])
    for other in ("reference", "fast"):
        loss, out, grads = run(models[other])
        for got, want in zip(lean_out, out):
            assert rel_err(got, want) <= 1e-5, other
        assert rel_err(lean_loss, loss) <= 1e-6, other
        assert rel_err(flat(lean_grads), flat(grads)) <= 1e-5, other
        for part in ("depth", "stem", "decoder"):
            assert np.linalg.norm(flat(grads[part])) > 0.0, (other, part)
            assert rel_err(flat(lean_grads[part]), flat(grads[part])) <= 1e-5, (other, part)
