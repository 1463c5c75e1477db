"""The NAF block's forward pass one band of rows at a time, for forward-only passes on CPU.

A NAF block at full resolution makes a dozen full-size intermediates (LayerNorm, the expanded
1x1 output, the depthwise output, the gate, ...), each written to memory and read back: on a
CPU the decoder's forward is bound by that traffic, not by its arithmetic. Run over bands of a
few rows, the same ops keep their intermediates in cache. Two things span the whole image and
split the block into two passes over the bands:

1. expand (LN -> 1x1) on the band plus a one-pixel halo, the expanded map masked to zero
   where the halo lies outside the image (the depthwise conv's zero padding, without a padded
   copy of the expanded map), depthwise 3x3 -> SimpleGate over the band's own pixels. The
   channel attention's image-wide mean is taken over the stacked result after the loop: summed
   inside the loop, XLA:CPU fused the depthwise conv into both the sum and the stacking and
   computed it twice.
2. the FFT branch runs on the whole input in between (a transform over the full image), then
   the rest of the block (channel attention, 1x1, FFN, residuals) band by band.

Every pixel goes through the same ops as in the whole-image block; only the mean's summation
order differs (float rounding). No gradients flow through this path by design: the backends
that stripe are the forward-only ones (`backends.inference_backend`).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

HALO = 1  # rows the 3x3 depthwise conv reads above and below a band
# Shorter maps run whole: the decoder's coarsest level (few rows, many channels) already keeps
# its intermediates close to cache, and a short loop only adds its overhead.
MIN_BANDS = 4


def stripe_rows(height: int, target: int) -> int:
    """Rows per band for a map `height` rows tall: the largest divisor of `height` not above
    `target` (bands tile the map exactly), or 0 (no striping) when `target` is 0, the map is
    under `MIN_BANDS` targets tall, or the divisor would be under half of `target`."""
    if target <= 0 or height < MIN_BANDS * target:
        return 0
    rows = next(d for d in range(target, 0, -1) if height % d == 0)
    return rows if 2 * rows >= target else 0


def naf_block_striped(block: Any, params: Any, x: jax.Array, rows: int) -> jax.Array:
    """`block.apply({"params": params}, x)` (a `blocks.NAFBlock`, unbound) over bands of `rows`
    rows; `x (B, H, W, C)` with `H % rows == 0`. Returns `(B, H, W, C)` in the block's dtype."""
    b, h, w, _ = x.shape
    if h % rows:
        raise ValueError(f"naf_block_striped: {rows} rows per band do not tile height {h}")
    bands = h // rows
    variables = {"params": params}

    def band_rows(a: jax.Array, i: jax.Array, halo: int = 0) -> jax.Array:
        """Rows `[i*rows - halo, (i+1)*rows + halo)` of `a`; rows outside the map are clamped
        copies (the caller zeroes what they feed)."""
        main = lax.dynamic_slice_in_dim(a, i * rows, rows, axis=1)
        if not halo:
            return main
        above = lax.dynamic_slice_in_dim(a, jnp.maximum(i * rows - halo, 0), halo, axis=1)
        below = lax.dynamic_slice_in_dim(a, jnp.minimum((i + 1) * rows, h - halo), halo, axis=1)
        return jnp.concatenate([above, main, below], axis=1)

    col = jnp.arange(w + 2 * HALO) - HALO
    col_inside = (col >= 0) & (col < w)

    def mix_band(i: jax.Array) -> jax.Array:
        band = jnp.pad(band_rows(x, i, HALO), ((0, 0), (0, 0), (HALO, HALO), (0, 0)))
        t = block.apply(variables, band, "expand")  # (B, rows + 2, W + 2, C')
        row = i * rows - HALO + jnp.arange(rows + 2 * HALO)
        inside = ((row >= 0) & (row < h))[:, None] & col_inside[None, :]
        return block.apply(variables, t * inside.astype(t.dtype)[None, :, :, None], "mix")

    mixed = lax.map(mix_band, jnp.arange(bands))  # (n, B, rows, W, C')
    mean = jnp.mean(mixed.astype(jnp.float32), axis=(0, 2, 3))[:, None, None, :]
    spectral = block.apply(variables, x, "fft") if block.fft else None

    def finish_band(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        i, y = args
        spec = None if spectral is None else band_rows(spectral, i)
        return block.apply(variables, band_rows(x, i), "finish", mixed=y, mixed_mean=mean,
                           spectral=spec)

    out = lax.map(finish_band, (jnp.arange(bands), mixed))  # (n, B, rows, W, C)
    return jnp.moveaxis(out, 0, 1).reshape(b, h, w, out.shape[-1])
