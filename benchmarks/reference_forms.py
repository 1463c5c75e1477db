"""The formulation the lean accelerator step replaced (issue 22's reference), as a `Backend`.

`REFERENCE` computes what `backends.LAX` computes, with the same params, in the forms the lax
backend had before the lean step: one `lax.conv_general_dilated` per convolution on the
concatenated channel pieces (1x1 convs included), split afterwards; flax's LayerNorm formula
differentiated by autodiff; the FFT branch channels-last. `tests/test_lean_step.py` checks the
lean step's gradients against it; `gpu_compile.py --forms reference` and `train_step.py
--conv_impl reference` compile the train step with it (`ReferenceDeblurTask`).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
from jax import lax

from radblur_jax.models import conv_modules, conv_ops, norms
from radblur_jax.models.backends import Backend
from radblur_jax.models.configs import validate_config
from radblur_jax.models.radblur import RADBlur
from radblur_jax.train.tasks import DeblurTask


class ReferenceConv(conv_modules.Conv):
    """The pre-lean `impl="lax"` conv: one `lax.conv_general_dilated` of the concatenated
    pieces (1x1 convs included), bias, then split into the output pieces."""

    def _pieces(self, pieces, kernel, bias, out_pieces):
        strides = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        pads = conv_ops.padding_pairs(self.padding, pieces[0].shape[1:3], kernel.shape[:2], strides)
        y = lax.conv_general_dilated(jnp.concatenate(pieces, axis=-1), kernel, strides, pads,
                                     dimension_numbers=conv_ops.DIMENSION_NUMBERS,
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


REFERENCE = Backend(name="lax", conv=functools.partial(ReferenceConv, impl="lax"),
                    conv_transpose=functools.partial(conv_modules.ConvTranspose, impl="lax"),
                    norm=functools.partial(ReferenceNorm, impl="lax"),
                    sum_rows=conv_ops.reduce_rows)


class ReferenceDeblurTask(DeblurTask):
    """`DeblurTask` whose model computes with `REFERENCE` (the config's `conv_impl` unused)."""

    @staticmethod
    def build_model(cfg: ml_collections.ConfigDict) -> RADBlur:
        return RADBlur(validate_config(cfg), REFERENCE)
