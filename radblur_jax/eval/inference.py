"""Test-time inference: full image or sliding windows, optional x8 self-ensemble, sharded batches.

`restore_fn(model, ...)` builds a pure `f(params, blurry) -> (restored, disparity)` for
`blurry (B, H, W, 3)` float32 in [0, 1] (any H, W: the model pads to its multiples and crops
back). `Restorer` jits it once per input shape and shards the batch over the devices.

Sliding windows: windows of `tile` px (clipped to the image) start every `tile - overlap` px,
the last one flush with the border; each output pixel is the weighted mean of the windows that
cover it, with weights ramping linearly over `overlap` px from each window edge. The windows
run `tile_batch` at a time in one loop that slices them out of the image and adds them into
the output, so the program and its memory do not grow with their number. Disparity is
relative (its scale differs per window), so in window mode it is predicted once on the whole
image resized to about `tile * tile` pixels, mapped onto that image as the model's own forward
pass maps it (with `vit_input="resize"`: resized to the padded image, then cropped), and
resized back.

Adaptive exit (`adaptive=True`): every image, or every window in window mode, runs only the
sub-decoders its own exit logits ask for (`RADBlur.adaptive`); windows are blended exactly as
in fixed-depth mode. `restore_fn(..., with_steps=True)` and `Restorer.restore` also return the
sub-decoders run per image and window.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from radblur_jax.models.backends import Backend, inference_backend
from radblur_jax.models.layers import bilinear_resize
from radblur_jax.models.spmd import on_mesh

RestoreFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """tile: window side in px (0 = whole image); overlap: px shared by neighbouring windows;
    tile_batch: windows per forward pass; self_ensemble: average over the 8 flips/rotations;
    num_active: sub-decoders to run (None = all); adaptive: the exit head picks them per image
    (per window in window mode)."""
    tile: int = 0
    overlap: int = 32
    tile_batch: int = 4
    self_ensemble: bool = False
    num_active: int | None = None
    adaptive: bool = False

    def __post_init__(self):
        if self.tile < 0 or self.overlap < 0 or self.tile_batch < 1:
            raise ValueError(f"InferenceOptions: tile, overlap must be >= 0 and tile_batch >= 1, "
                             f"got {self}")
        if self.tile and self.overlap >= self.tile:
            raise ValueError(f"InferenceOptions: overlap ({self.overlap}) must be smaller than "
                             f"tile ({self.tile})")
        if self.adaptive and self.num_active is not None:
            raise ValueError("InferenceOptions: adaptive picks the number of sub-decoders; "
                             f"num_active ({self.num_active}) must be None with it")


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


def restore_fn(model: Any, options: InferenceOptions = InferenceOptions(), *,
               with_steps: bool = False, backend: Backend | None = None) -> RestoreFn:
    """Pure `f(params, blurry (B, H, W, 3)) -> (restored (B, H, W, 3), disparity (B, H, W))`.

    restored is the last sub-decoder's output (not clipped); disparity is the depth branch's
    relative disparity. `with_steps` adds a third output, `steps (B, N)` int32: the sub-decoders
    run for each of the N windows (N = 1 for the whole image; x8 with self-ensemble).
    A model with a `backend` (RADBlur) computes with `backend`, by default its own backend's
    forward-only form (`backends.inference_backend`: the same function).
    """
    if isinstance(getattr(model, "backend", None), Backend):
        model = model.clone(backend=backend or inference_backend(model.backend))

    def forward(params, x):
        """`(restored (b, h, w, 3), disparity (b, h, w), steps (b,))` of one pass."""
        if options.adaptive:
            out = model.apply({"params": params}, x, method="adaptive")
            return out.restored, out.disparity, out.steps
        out = model.apply({"params": params}, x, num_active=options.num_active)
        steps = jnp.full((x.shape[0],), out.restored.shape[0], jnp.int32)
        return out.restored[-1], out.disparity, steps

    def full(params, x):
        restored, disparity, steps = forward(params, x)
        return restored, disparity, steps[:, None]

    def depth_resized(params, x):
        b, h, w, _ = x.shape
        scale = min(1.0, options.tile / float(np.sqrt(h * w)))
        size = (max(14, int(round(h * scale))), max(14, int(round(w * scale))))
        small = jax.image.resize(x, (b, *size, 3), "linear", antialias=True)
        padded, depth_out, _ = model.apply({"params": params}, small, method="encode")
        disp = depth_out.disparity
        if getattr(getattr(model, "cfg", None), "vit_input", "pad") == "resize":
            # The path of RADBlur._decoder_inputs: with vit_input "resize" the encoder's map
            # covers the whole stem-padded image at the ViT's size, so it is resized to the
            # padded shape before the crop (in "pad" mode it is pixel-aligned already).
            disp = bilinear_resize(disp[..., None], padded.shape[1:3],
                                   align_corners=False)[..., 0]
        disp = disp[:, :size[0], :size[1]]
        return jax.image.resize(disp, (b, h, w), "linear")

    def tiled(params, x):
        b, h, w, _ = x.shape
        ys = window_starts(h, options.tile, options.overlap)
        xs = window_starts(w, options.tile, options.overlap)
        th, tw = min(h, options.tile), min(w, options.tile)
        n, k = len(ys) * len(xs), options.tile_batch
        # Windows in row-major order, `k` per pass; the last pass is filled up with copies of
        # the last window, which run but are not added.
        boxes = np.array([(y, x0) for y in ys for x0 in xs], np.int32)
        boxes = np.concatenate([boxes, np.repeat(boxes[-1:], (-n) % k, axis=0)])
        valid = np.arange(len(boxes)) < n
        ramp_y = blend_ramp(th, options.overlap if len(ys) > 1 else 0)
        ramp_x = blend_ramp(tw, options.overlap if len(xs) > 1 else 0)
        weight = jnp.asarray(np.outer(ramp_y, ramp_x))[None, :, :, None]
        # The windows form a grid, so the summed weights are an outer product of two vectors
        # (no (H, W) constant in the program).
        norm_y, norm_x = np.zeros(h, np.float32), np.zeros(w, np.float32)
        for y in ys:
            norm_y[y:y + th] += ramp_y
        for x0 in xs:
            norm_x[x0:x0 + tw] += ramp_x

        def one_pass(acc, chunk):
            chunk_boxes, chunk_valid = chunk
            windows = [jax.lax.dynamic_slice(x, (0, y, x0, 0), (b, th, tw, 3))
                       for y, x0 in chunk_boxes]
            restored, _, steps = forward(params, jnp.concatenate(windows))
            for i, (y, x0) in enumerate(chunk_boxes):
                region = jax.lax.dynamic_slice(acc, (0, y, x0, 0), (b, th, tw, 3))
                added = region + restored[i * b:(i + 1) * b] * weight
                acc = jax.lax.dynamic_update_slice(
                    acc, jnp.where(chunk_valid[i], added, region), (0, y, x0, 0))
            return acc, steps

        acc, steps = jax.lax.scan(one_pass, jnp.zeros((b, h, w, 3), jnp.float32),
                                  (boxes.reshape(-1, k, 2), valid.reshape(-1, k)))
        steps = steps.reshape(-1, b)[:n].T
        norm = jnp.asarray(norm_y)[:, None] * jnp.asarray(norm_x)[None, :]
        return acc / norm[None, :, :, None], depth_resized(params, x), steps

    def single(params, x):
        h, w = x.shape[1:3]
        if options.tile and (h > options.tile or w > options.tile):
            return tiled(params, x)
        return full(params, x)

    def ensemble(params, x):
        outs = [single(params, _dihedral(x, k)) for k in range(8)]
        restored = sum(_dihedral_inverse(r, k) for k, (r, _, _) in enumerate(outs)) / 8.0
        disp = sum(_dihedral_inverse(d[..., None], k)[..., 0]
                   for k, (_, d, _) in enumerate(outs)) / 8.0
        return restored, disp, jnp.concatenate([s for _, _, s in outs], axis=1)

    fn = ensemble if options.self_ensemble else single
    return fn if with_steps else lambda params, x: fn(params, x)[:2]


def data_mesh(devices: list | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: all)."""
    devices = devices if devices is not None else jax.devices()
    return jax.sharding.Mesh(np.asarray(devices), ("data",))


class Restoration(NamedTuple):
    """`Restorer.restore`'s result (numpy): restored `(B, H, W, 3)`, disparity `(B, H, W)`,
    steps `(B, N)` int32 (sub-decoders run per window, see `restore_fn`)."""
    restored: np.ndarray
    disparity: np.ndarray
    steps: np.ndarray


class Restorer:
    """Jitted, batch-sharded inference: `restorer(images) -> (restored, disparity)` in numpy
    (`restorer.restore(images)` adds the sub-decoders run, a `Restoration`).

    `images (B, H, W, 3)` float32 in [0, 1]; the batch is padded (repeating the last image) to a
    multiple of the device count and split over the mesh's "data" axis; params are replicated.
    One compilation per distinct input shape.

    With `memory_limit` (bytes) and whole images (`options.tile == 0`), each input shape's
    program is compiled whole first; when XLA's memory analysis of it (arguments, outputs and
    temporaries) exceeds the limit, that shape is restored in windows of `fallback_tile` px
    instead, and `on_fallback(message)` is told why. With `windows_above` (pixels) as well,
    images with more pixels than that go to the windows without the whole-image compile.
    """

    def __init__(self, model: Any, params: Any, options: InferenceOptions = InferenceOptions(),
                 mesh: jax.sharding.Mesh | None = None, *, memory_limit: int | None = None,
                 fallback_tile: int = 512, windows_above: int | None = None,
                 on_fallback: Callable[[str], None] | None = None):
        self.mesh = mesh if mesh is not None else data_mesh()
        self.options = options
        self.memory_limit = memory_limit if not options.tile else None
        self.windows_above = windows_above if self.memory_limit is not None else None
        self._batch = NamedSharding(self.mesh, PartitionSpec("data"))
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.params = jax.device_put(params, replicated)
        self._on_fallback = on_fallback

        def jitted(opts: InferenceOptions):
            return jax.jit(on_mesh(self.mesh, restore_fn(model, opts, with_steps=True)),
                           in_shardings=(replicated, self._batch),
                           out_shardings=(self._batch,) * 3)

        self._fns = {options.tile: jitted(options)}
        if self.memory_limit is not None:
            self.fallback = dataclasses.replace(options, tile=fallback_tile)
            self._fns[fallback_tile] = jitted(self.fallback)
        self._compiled: dict[tuple[int, ...], jax.stages.Compiled] = {}
        self._tiles: dict[tuple[int, ...], int] = {}

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.restore(images)[:2]

    def _lower(self, tile: int, images: np.ndarray) -> jax.stages.Lowered:
        return self._fns[tile].lower(self.params, jax.ShapeDtypeStruct(
            images.shape, jnp.float32, sharding=self._batch))

    def tile_for(self, images: np.ndarray) -> int:
        """The window side `restore` uses for `images`' shape (0 = whole image); with a
        `memory_limit`, compiles the whole-image program to measure it (once per shape), unless
        the images have more than `windows_above` pixels."""
        shape = tuple(np.shape(images))
        if shape not in self._tiles:
            tile, why = self.options.tile, None
            if self.windows_above is not None and shape[1] * shape[2] > self.windows_above:
                why = f"over {self.windows_above / 1e6:g} MP"
            elif self.memory_limit is not None:
                compiled = self._lower(tile, images).compile()
                need = program_bytes(compiled)
                if need > self.memory_limit:
                    why = (f"restored whole they need {_bytes_text(need)}, over the limit of "
                           f"{_bytes_text(self.memory_limit)}")
                else:
                    self._compiled[shape] = compiled
            if why is not None:
                tile = self.fallback.tile
                if self._on_fallback:
                    batch = f" (a batch of {shape[0]})" if shape[0] > 1 else ""
                    self._on_fallback(f"images of {shape[2]} x {shape[1]} px{batch}: {why}; "
                                      f"restored in windows of {tile} px")
            self._tiles[shape] = tile
        return self._tiles[shape]

    def lower(self, images: np.ndarray) -> jax.stages.Lowered:
        """The program `restore` runs for `images (B, H, W, 3)`, lowered (B a multiple of the
        device count): for its cost analysis, its optimized HLO, or a profile's op names."""
        return self._lower(self.tile_for(images), images)

    def restore(self, images: np.ndarray) -> Restoration:
        """`Restoration` of `images (B, H, W, 3)` float32 in [0, 1]."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Restorer: expected (B, H, W, 3) images, got {images.shape}")
        b = images.shape[0]
        pad = (-b) % self.num_devices
        if pad:
            images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
        if images.shape not in self._compiled:
            self._compiled[images.shape] = self.lower(images).compile()
        restored, disp, steps = self._compiled[images.shape](
            self.params, jax.device_put(images, self._batch))
        return Restoration(np.asarray(restored)[:b], np.asarray(disp)[:b], np.asarray(steps)[:b])


def _bytes_text(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def program_bytes(compiled: jax.stages.Compiled) -> int:
    """Memory a compiled program needs by XLA's memory analysis: its arguments, outputs and
    temporaries (outputs aliasing arguments counted once); per device for a sharded program,
    as an accelerator's limit is."""
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def available_memory(device: jax.Device | None = None) -> int | None:
    """Bytes a program may use on `device` (default: the first local device): an accelerator's
    allocator limit, on the CPU the host's available memory (Linux `MemAvailable`); None when
    unknown."""
    device = device if device is not None else jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
