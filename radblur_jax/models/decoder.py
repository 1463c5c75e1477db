"""Blur stem and reversible coupling decoder (RevCol/AdaRevD form), NHWC.

Levels k = 0..3 run coarse to fine at scales 1/8, 1/4, 1/2, 1 with `width * 2**(3-k)` channels;
the bottleneck `x` sits at 1/16 with `16 * width` channels. One sub-decoder updates every level:

    c_k' = alpha_k * c_k + L_k(z_k),   z_k = Up(c_{k-1}') + Down(c_{k+1}) [+ ADA_k(z_k, D_k)]

with `c_{-1}' = x` and no Down term at the finest level; `sharp = blurry + Head(c_3')`.
It inverts fine to coarse: `c_k = (c_k' - L_k(z_k)) / alpha_k`, where `z_k` needs only `c_{k-1}'`
(new) and `c_{k+1}` (already recovered). See docs/architecture.md.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from radblur_jax.models.ada import AdaptiveDepthAttention
from radblur_jax.models.backends import LAX, Backend
from radblur_jax.models.blocks import Down, NAFBlock, Up
from radblur_jax.models.remat import deferred_remat
from radblur_jax.models.reversible import early_exit_forward, reversible_sequence

NUM_LEVELS = 4
ALPHA_MIN = 1e-3

States = tuple  # (c_0, c_1, c_2, c_3), coarse to fine, each (B, h_k, w_k, C_k) float32

# Compute dtype: as in blocks.py; the states of the reversible pyramid stay float32 (inversion
# divides by alpha).


def level_channels(width: int) -> tuple[int, ...]:
    """Channels per decoder level, coarse (1/8) to fine (1)."""
    return tuple(width * 2 ** (NUM_LEVELS - 1 - k) for k in range(NUM_LEVELS))


def clamp_alpha(alpha: jax.Array) -> jax.Array:
    """`sign(a) * max(|a|, 1e-3)` (sign(0) := +1), so the coupling stays invertible."""
    sign = jnp.where(alpha >= 0, 1.0, -1.0).astype(alpha.dtype)
    return sign * jnp.maximum(jnp.abs(alpha), ALPHA_MIN)


class BlurStem(nn.Module, kw_only=True):
    """Shallow conv pyramid: `(B, H, W, 3)`, H and W multiples of 16 -> (states, bottleneck).

    states: `c^0` at 1/8, 1/4, 1/2, 1 (coarse to fine, `level_channels(width)`); bottleneck
    `(B, H/16, W/16, 16*width)`; all float32 (computed in `dtype`). `remat`: the NAF blocks'
    activations are recomputed in the backward pass (`remat.deferred_remat`) instead of kept
    through the decoder's backward.
    """
    width: int
    blocks: int = 1
    remat: bool = False
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    @nn.compact
    def __call__(self, image: jax.Array) -> tuple[States, jax.Array]:
        if image.shape[1] % 16 or image.shape[2] % 16:
            raise ValueError(f"BlurStem: H, W must be multiples of 16, got {image.shape}")
        conv, dt = self.backend.conv, self.dtype
        x = conv(self.width, (3, 3), padding=1, dtype=dt, name="intro")(image)
        fine_to_coarse = []
        for s in range(NUM_LEVELS + 1):
            for j in range(self.blocks):
                block = NAFBlock(dtype=dt, backend=self.backend, name=f"scale{s}_block{j}")
                x = deferred_remat(block, x) if self.remat else block(x)
            if s == NUM_LEVELS:
                break
            fine_to_coarse.append(x.astype(jnp.float32))
            x = conv(2 * x.shape[-1], (2, 2), strides=2, padding="VALID", dtype=dt,
                     name=f"down{s}")(x)
        return tuple(reversed(fine_to_coarse)), x.astype(jnp.float32)


class SubDecoder(nn.Module, kw_only=True):
    """One reversible sub-decoder: all 4 levels, coarse to fine, plus its output head.

    The head (3x3 conv) starts with 10x smaller weights than LeCun init, so every output
    starts close to the blurry input.

    `__call__(states, context) -> (new_states, image)`; `inverse(new_states, context) -> states`.
    `context = (bottleneck, depth, blurry)`: bottleneck `(B, H/16, W/16, 16*width)`, depth a tuple
    of 4 projected depth maps shaped like the states (or None without depth attention),
    blurry `(B, H, W, 3)`; image `(B, H, W, 3)` float32. The coupling `L_k` computes in `dtype`;
    states stay float32.
    """
    width: int
    fft: bool = True
    depth_attention: bool = True
    dw_expand: int = 2
    ffn_expand: int = 2
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    def setup(self) -> None:
        chans, dt, backend = level_channels(self.width), self.dtype, self.backend
        self.ups = [Up(c, dtype=dt, backend=backend) for c in chans]
        self.downs = [Down(c, dtype=dt, backend=backend) for c in chans[:-1]]
        self.blocks = [NAFBlock(dw_expand=self.dw_expand, ffn_expand=self.ffn_expand,
                                fft=self.fft, dtype=dt, backend=backend) for _ in chans]
        if self.depth_attention:
            self.ada = [AdaptiveDepthAttention(dtype=dt, backend=backend) for _ in chans]
        self.alphas = [self.param(f"alpha_{k}", nn.initializers.constant(0.5), (c,), jnp.float32)
                       for k, c in enumerate(chans)]
        small = nn.initializers.variance_scaling(0.01, "fan_in", "truncated_normal")
        self.head = backend.conv(3, (3, 3), padding=1, kernel_init=small, dtype=dt)

    def coupling(self, k: int, coarse_new: jax.Array, fine_old: jax.Array | None,
                 depth_k: jax.Array | None) -> jax.Array:
        """`L_k(z_k)` (float32) from the new coarser state, the old finer state (None at the
        finest level) and level k's depth features (None without depth attention)."""
        z = self.ups[k](coarse_new)
        if k < NUM_LEVELS - 1:
            z = z + self.downs[k](fine_old)
        if self.depth_attention:
            z = self.ada[k](z, depth_k)
        return self.blocks[k](z).astype(jnp.float32)

    def output(self, finest: jax.Array, blurry: jax.Array) -> jax.Array:
        """The sub-decoder's image `blurry + Head(c_3')`, float32."""
        return blurry + self.head(finest).astype(jnp.float32)

    def __call__(self, states: States, context: tuple) -> tuple[States, jax.Array]:
        bottleneck, depth, blurry = context
        new, coarse = [], bottleneck
        for k in range(NUM_LEVELS):
            fine = states[k + 1] if k < NUM_LEVELS - 1 else None
            coupled = self.coupling(k, coarse, fine, _level(depth, k))
            c = clamp_alpha(self.alphas[k]) * states[k] + coupled
            new.append(c)
            coarse = c
        return tuple(new), self.output(new[-1], blurry)

    def inverse(self, new: States, context: tuple) -> States:
        bottleneck, depth, _ = context
        old = [None] * NUM_LEVELS
        for k in reversed(range(NUM_LEVELS)):
            coarse = new[k - 1] if k > 0 else bottleneck
            fine = old[k + 1] if k < NUM_LEVELS - 1 else None
            coupled = self.coupling(k, coarse, fine, _level(depth, k))
            old[k] = (new[k] - coupled) / clamp_alpha(self.alphas[k])
        return tuple(old)


def _level(depth: Sequence[jax.Array] | None, k: int) -> jax.Array | None:
    return None if depth is None else depth[k]


def _level_params(params: dict, k: int) -> dict:
    """The part of a SubDecoder's params that `coupling(k, ...)` reads (plus the alphas, which
    `setup` looks up)."""
    names = [f"ups_{k}", f"downs_{k}", f"blocks_{k}", f"ada_{k}"]
    names += [f"alpha_{j}" for j in range(NUM_LEVELS)]
    return {n: params[n] for n in names if n in params}


def sub_decoder_backward(module: SubDecoder, params: dict, new: States, anchor: States,
                         use_anchor: jax.Array, context: tuple, g_new: States,
                         g_image: jax.Array) -> tuple[States, dict, States, tuple]:
    """One sub-decoder's backward pass in the reversible chain, inversion and VJP fused.

    From the sub-decoder's output states `new` and the cotangents of `new` and of its image,
    returns `(old, g_params, g_old, g_context)`: its input states, rebuilt level by level fine
    to coarse (or `anchor` where `use_anchor`), and the cotangents of its params, input states
    and context (structured like `params`, `new` and `context`).

    The inversion `c_k = (c_k' - L_k(z_k)) / alpha_k` evaluates the coupling at exactly the point
    the forward did, so one `jax.vjp` of `L_k` there serves both: the coupling runs once per
    level instead of twice (inverse, then a recomputed forward for the VJP). The levels go fine
    to coarse, the order in which the cotangent of `c_k'` becomes complete (its last
    contribution comes from `L_{k+1}`) and in which the inversion needs `c_{k+1}`.
    """
    bottleneck, depth, blurry = context

    def coupling(p, k, coarse, fine, depth_k):
        return module.apply({"params": p}, k, coarse, fine, depth_k, method=SubDecoder.coupling)

    def output(p, finest, image_in):
        return module.apply({"params": p}, finest, image_in, method=SubDecoder.output)

    head_params = {n: v for n, v in params.items() if n == "head" or n.startswith("alpha_")}
    _, head_vjp = jax.vjp(output, head_params, new[-1], blurry)
    g_head, g_finest, g_blurry = head_vjp(g_image)
    g_params = {"head": g_head["head"]}
    g_new = list(g_new[:-1]) + [g_new[-1] + g_finest]
    old, g_old = [None] * NUM_LEVELS, [None] * NUM_LEVELS
    g_depth = [None] * NUM_LEVELS
    g_bottleneck = None
    for k in reversed(range(NUM_LEVELS)):
        coarse = new[k - 1] if k > 0 else bottleneck
        fine = old[k + 1] if k < NUM_LEVELS - 1 else None
        depth_k = _level(depth, k)
        level_p = _level_params(params, k)
        coupled, coupling_vjp = jax.vjp(lambda p, c, f, d, k=k: coupling(p, k, c, f, d),
                                        level_p, coarse, fine, depth_k)
        raw_alpha = params[f"alpha_{k}"]
        alpha, alpha_vjp = jax.vjp(clamp_alpha, raw_alpha)
        old[k] = jnp.where(use_anchor, anchor[k], (new[k] - coupled) / alpha)
        g_level, g_coarse, g_fine, g_depth[k] = coupling_vjp(g_new[k])
        g_params.update({n: v for n, v in g_level.items() if not n.startswith("alpha_")})
        (g_params[f"alpha_{k}"],) = alpha_vjp(module.backend.sum_rows(g_new[k] * old[k]))
        g_old[k] = alpha * g_new[k]
        if k < NUM_LEVELS - 1:
            g_old[k + 1] = g_old[k + 1] + g_fine
        if k > 0:
            g_new[k - 1] = g_new[k - 1] + g_coarse
        else:
            g_bottleneck = g_coarse
    g_context = (g_bottleneck, None if depth is None else tuple(g_depth), g_blurry)
    return tuple(old), g_params, tuple(g_old), g_context


class ReversibleDecoder(nn.Module, kw_only=True):
    """K sub-decoders sharing one pyramid; their params are stacked on a leading K axis.

    `__call__(states, bottleneck, depth_features, blurry, num_active=None)`:
      states: `c^0` from `BlurStem`; bottleneck `(B, H/16, W/16, 16*width)`;
      depth_features: 4 maps at the level sizes (any channels), None without depth attention;
      blurry `(B, H, W, 3)`.
    Returns `(n, B, H, W, 3)` float32: the image of each of the first `n = num_active or K`
    sub-decoders; with `exit_steps (B,)` int instead (inference only, no gradients), `(B, H, W,
    3)`: each image after its own number of sub-decoders (the chain stops at the largest).
    The stacked params `sub_decoders/...` are created by `nn.vmap` over `SubDecoder` (on small
    dummy inputs); the forward applies them with the pure step
    `SubDecoder.apply(p_i, states, context)` that the reversible chain needs. With
    `reversible=True` backprop inverts the coupling instead of storing activations, keeping only
    the pyramid entering every `anchor_every`-th sub-decoder (see reversible.py); `keep_last`
    keeps the last sub-decoder's activations from the forward instead of rebuilding it;
    `unroll=True` unrolls the scans over sub-decoders (for XLA cost analysis).
    """
    width: int
    num_sub_decoders: int
    fft: bool = True
    depth_attention: bool = True
    reversible: bool = True
    anchor_every: int = 2
    dw_expand: int = 2
    ffn_expand: int = 2
    unroll: bool = False
    keep_last: bool = False
    dtype: jnp.dtype = jnp.float32
    backend: Backend = LAX

    def _sub_decoder_kwargs(self) -> dict:
        return dict(width=self.width, fft=self.fft, depth_attention=self.depth_attention,
                    dw_expand=self.dw_expand, ffn_expand=self.ffn_expand, dtype=self.dtype,
                    backend=self.backend)

    def _create_stacked(self) -> None:
        """Creates `sub_decoders/...` params, `(K, ...)` each, with `nn.vmap` (init only)."""
        chans = level_channels(self.width)
        states = tuple(jnp.zeros((1, 2 ** (k + 1), 2 ** (k + 1), c)) for k, c in enumerate(chans))
        context = (jnp.zeros((1, 1, 1, 2 * chans[0])), states if self.depth_attention else None,
                   jnp.zeros((1, 16, 16, 3)))
        stacked = nn.vmap(SubDecoder, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=None, axis_size=self.num_sub_decoders)
        stacked(**self._sub_decoder_kwargs(), name="sub_decoders")(states, context)

    @nn.compact
    def __call__(self, states: States, bottleneck: jax.Array,
                 depth_features: Sequence[jax.Array] | None, blurry: jax.Array,
                 num_active: int | None = None,
                 exit_steps: jax.Array | None = None) -> jax.Array:
        depth = None
        if self.depth_attention:
            if depth_features is None:
                raise ValueError("ReversibleDecoder with depth attention needs depth_features")
            chans = level_channels(self.width)
            depth = tuple(
                self.backend.conv(c, (1, 1), dtype=self.dtype, name=f"depth_proj_{k}")(f)
                .astype(jnp.float32) for k, (c, f) in enumerate(zip(chans, depth_features)))
        if self.is_initializing():
            self._create_stacked()
        stacked = self.variables["params"]["sub_decoders"]
        if exit_steps is not None:
            module = SubDecoder(**self._sub_decoder_kwargs(), parent=None)
            step = lambda p, s, ctx: module.apply({"params": p}, s, ctx)
            return early_exit_forward(step, stacked, tuple(states), (bottleneck, depth, blurry),
                                      exit_steps)
        n = self.num_sub_decoders if num_active is None else int(num_active)
        if not 1 <= n <= self.num_sub_decoders:
            raise ValueError(f"num_active={n} outside 1..{self.num_sub_decoders}")
        stacked = jax.tree_util.tree_map(lambda a: a[:n], stacked)
        module = SubDecoder(**self._sub_decoder_kwargs(), parent=None)
        step = lambda p, s, ctx: module.apply({"params": p}, s, ctx)
        inverse = lambda p, s, ctx: module.apply({"params": p}, s, ctx, method=SubDecoder.inverse)
        backward = functools.partial(sub_decoder_backward, module)
        _, images = reversible_sequence(step, inverse, stacked, tuple(states),
                                        (bottleneck, depth, blurry), reversible=self.reversible,
                                        backward_step=backward,
                                        anchor_every=self.anchor_every,
                                        unroll=True if self.unroll else 1,
                                        keep_last=self.keep_last)
        return images
