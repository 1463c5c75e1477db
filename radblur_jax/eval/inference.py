"""Test-time inference: full image or sliding windows, optional x8 self-ensemble, sharded batches.

`restore_fn(model, ...)` builds a pure `f(params, blurry) -> (restored, disparity)` for
`blurry (B, H, W, 3)` float32 in [0, 1] (any H, W: the model pads to its multiples and crops
back). `Restorer` jits it once per input shape and shards the batch over the devices.

Sliding windows: windows of `tile` px (clipped to the image) start every `tile - overlap` px,
the last one flush with the border; each output pixel is the weighted mean of the windows that
cover it, with weights ramping linearly over `overlap` px from each window edge. Disparity is
relative (its scale differs per window), so in window mode it is predicted once on the whole
image resized to about `tile * tile` pixels and resized back.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

RestoreFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """tile: window side in px (0 = whole image); overlap: px shared by neighbouring windows;
    tile_batch: windows per forward pass; self_ensemble: average over the 8 flips/rotations;
    num_active: sub-decoders to run (None = all)."""
    tile: int = 0
    overlap: int = 32
    tile_batch: int = 4
    self_ensemble: bool = False
    num_active: int | None = None

    def __post_init__(self):
        if self.tile < 0 or self.overlap < 0 or self.tile_batch < 1:
            raise ValueError(f"InferenceOptions: tile, overlap must be >= 0 and tile_batch >= 1, "
                             f"got {self}")
        if self.tile and self.overlap >= self.tile:
            raise ValueError(f"InferenceOptions: overlap ({self.overlap}) must be smaller than "
                             f"tile ({self.tile})")


def window_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of windows of `min(tile, size)` px covering `[0, size)`."""
    if tile <= 0 or size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def blend_ramp(length: int, overlap: int) -> np.ndarray:
    """`(length,)` float32 weights: linear from ~0 to 1 over `overlap` px at both ends."""
    i = np.arange(length, dtype=np.float64) + 0.5
    if overlap <= 0:
        return np.ones(length, np.float32)
    return np.minimum(1.0, np.minimum(i, length - i) / overlap).astype(np.float32)


def _dihedral(x: jax.Array, k: int) -> jax.Array:
    """The k-th of the 8 flips/rotations of `(B, H, W, C)` (k = 0 is the identity)."""
    if k >= 4:
        x = jnp.flip(x, axis=2)
    return jnp.rot90(x, k % 4, axes=(1, 2))


def _dihedral_inverse(x: jax.Array, k: int) -> jax.Array:
    x = jnp.rot90(x, -(k % 4), axes=(1, 2))
    return jnp.flip(x, axis=2) if k >= 4 else x


def restore_fn(model: Any, options: InferenceOptions = InferenceOptions()) -> RestoreFn:
    """Pure `f(params, blurry (B, H, W, 3)) -> (restored (B, H, W, 3), disparity (B, H, W))`.

    restored is the last sub-decoder's output (not clipped); disparity is the depth branch's
    relative disparity.
    """
    def full(params, x):
        out = model.apply({"params": params}, x, num_active=options.num_active)
        return out.restored[-1], out.disparity

    def depth_resized(params, x):
        b, h, w, _ = x.shape
        scale = min(1.0, options.tile / float(np.sqrt(h * w)))
        size = (max(14, int(round(h * scale))), max(14, int(round(w * scale))))
        small = jax.image.resize(x, (b, *size, 3), "linear", antialias=True)
        disp = model.apply({"params": params}, small, method="encode")[1].disparity
        disp = disp[:, :size[0], :size[1]]
        return jax.image.resize(disp, (b, h, w), "linear")

    def tiled(params, x):
        b, h, w, _ = x.shape
        ys = window_starts(h, options.tile, options.overlap)
        xs = window_starts(w, options.tile, options.overlap)
        th, tw = min(h, options.tile), min(w, options.tile)
        boxes = [(y, x0) for y in ys for x0 in xs]
        windows = jnp.stack([x[:, y:y + th, x0:x0 + tw] for y, x0 in boxes])  # (N, B, th, tw, 3)
        n, k = len(boxes), options.tile_batch
        pad = (-n) % k
        if pad:
            windows = jnp.concatenate([windows, jnp.repeat(windows[-1:], pad, axis=0)])
        chunks = windows.reshape((n + pad) // k, k * b, th, tw, 3)

        def run(chunk):
            out = model.apply({"params": params}, chunk, num_active=options.num_active)
            return out.restored[-1]

        restored = jax.lax.map(run, chunks).reshape(n + pad, b, th, tw, 3)[:n]
        weight = np.outer(blend_ramp(th, options.overlap if len(ys) > 1 else 0),
                          blend_ramp(tw, options.overlap if len(xs) > 1 else 0))
        norm = np.zeros((h, w), np.float32)  # static: built on the host, not constant-folded
        for y, x0 in boxes:
            norm[y:y + th, x0:x0 + tw] += weight
        acc = jnp.zeros((b, h, w, 3), jnp.float32)
        w_dev = jnp.asarray(weight)[None, :, :, None]
        for i, (y, x0) in enumerate(boxes):
            acc = acc.at[:, y:y + th, x0:x0 + tw].add(restored[i] * w_dev)
        return acc / jnp.asarray(norm)[None, :, :, None], depth_resized(params, x)

    def single(params, x):
        h, w = x.shape[1:3]
        if options.tile and (h > options.tile or w > options.tile):
            return tiled(params, x)
        return full(params, x)

    def ensemble(params, x):
        outs = [single(params, _dihedral(x, k)) for k in range(8)]
        restored = sum(_dihedral_inverse(r, k) for k, (r, _) in enumerate(outs)) / 8.0
        disp = sum(_dihedral_inverse(d[..., None], k)[..., 0]
                   for k, (_, d) in enumerate(outs)) / 8.0
        return restored, disp

    return ensemble if options.self_ensemble else single


def data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: all)."""
    devices = devices if devices is not None else jax.devices()
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


class Restorer:
    """Jitted, batch-sharded inference: `restorer(images) -> (restored, disparity)` in numpy.

    `images (B, H, W, 3)` float32 in [0, 1]; the batch is padded (repeating the last image) to a
    multiple of the device count and split over the mesh's "data" axis; params are replicated.
    One compilation per distinct input shape.
    """

    def __init__(self, model: Any, params: Any, options: InferenceOptions = InferenceOptions(),
                 mesh: jax.sharding.Mesh | None = None):
        self.mesh = mesh if mesh is not None else data_mesh()
        self.options = options
        self._batch = NamedSharding(self.mesh, PartitionSpec("data"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.params = jax.device_put(params, replicated)
        self._fn = jax.jit(restore_fn(model, options), in_shardings=(replicated, self._batch),
                           out_shardings=(self._batch, self._batch))

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Restorer: expected (B, H, W, 3) images, got {images.shape}")
        b = images.shape[0]
        pad = (-b) % self.num_devices
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        restored, disp = self._fn(self.params, jax.device_put(images, self._batch))
        return np.asarray(restored)[:b], np.asarray(disp)[:b]
