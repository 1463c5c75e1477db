"""The lean accelerator formulation (`conv_impl="lax"`, reversible decoder) has the gradients
of the formulation it replaced, computed here by plain autodiff: `lax.conv_general_dilated`
on concatenated channels for every convolution (then split), flax's LayerNorm formula and the
FFT branch channels-last; and of the CPU's `fast` forms. One lean gradient serves both
comparisons (a whole-network gradient costs tens of seconds of compile)."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import rel_err
from jax import lax

from radblur_jax.compile_options import init_compiler_options
from radblur_jax.models import conv_ops, norms
from radblur_jax.models.backends import Backend
from radblur_jax.models.configs import radblur_config
from radblur_jax.models.radblur import RADBlur, build_radblur, init_radblur
from radblur_jax.train.losses import deblur_loss


class ReferenceConv(conv_ops.Conv):
    """The pre-lean `impl="lax"` conv: one `lax.conv_general_dilated` of the concatenated
    pieces (1x1 convs included), bias, then split into the output pieces."""

    def _pieces(self, pieces, kernel, bias, out_pieces):
        strides = conv_ops._int_pair(self.strides)
        pads = conv_ops._pairs(self.padding, pieces[0].shape[1:3], kernel.shape[:2], strides)
        y = lax.conv_general_dilated(conv_ops._concat(pieces), kernel, strides, pads,
                                     dimension_numbers=conv_ops._DN,
                                     feature_group_count=self.feature_group_count)
        y = y if bias is None else y + bias
        return [y] if out_pieces == 1 else jnp.split(y, out_pieces, axis=-1)


class ReferenceNorm(norms.LayerNorm):
    """flax's LayerNorm formula, differentiated by autodiff."""

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        return norms._reference(x.astype(jnp.float32), scale, bias, self.epsilon)


# The gradients compile without LLVM's optimisations, which shortens the test's compiles: the
# comparison is of formulations, each compiled the same way.
UNOPTIMISED = {"xla_backend_optimization_level": 0}
REFERENCE = Backend(name="lax", conv=functools.partial(ReferenceConv, impl="lax"),
                    conv_transpose=functools.partial(conv_ops.ConvTranspose, impl="lax"),
                    norm=functools.partial(ReferenceNorm, impl="lax"),
                    sum_rows=conv_ops.reduce_rows)


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
