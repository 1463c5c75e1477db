"""grain pipelines: training (aligned random crops, flips, rotations, batches) and evaluation.

Training: `MapDataset.source -> shard slice -> shuffle(seed) -> repeat -> random_map(augment)
-> batch -> to_iter_dataset -> mp_prefetch`. The augmentation's rng comes from grain and depends
only on (seed, global element index), so batches are identical for any worker or thread count,
and `iterator.get_state()` / `set_state()` resume on the exact next batch. To checkpoint an
iterator, use grain's orbax handler as one item of the train-state checkpoint:
`ocp.args.Composite(state=..., iter=grain.checkpoint.CheckpointSave(iterator))` to save and
`grain.checkpoint.CheckpointRestore(iterator)` to restore (tests/test_data_pipeline.py).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import sys
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from radblur_jax.data import image_io
from radblur_jax.data.image_io import DataError

SPATIAL_KEYS = ("blur", "sharp", "image", "depth", "valid", "mask")


def _spatial(ex: dict[str, Any]) -> list[str]:
    keys = [k for k in SPATIAL_KEYS if k in ex]
    sizes = {k: np.shape(ex[k])[:2] for k in keys}
    if len(set(sizes.values())) > 1:
        raise DataError(f"{ex.get('name', '?')}: fields differ in size {sizes}")
    return keys


def to_float(ex: dict[str, Any]) -> dict[str, Any]:
    """Integer images -> float32 in [0, 1] (uint8 / 255, uint16 / 65535); contiguous arrays."""
    out = dict(ex)
    for k in _spatial(ex):
        out[k] = np.ascontiguousarray(image_io.to_unit(np.asarray(ex[k])))
    return out


@dataclasses.dataclass(frozen=True)
class PairedAugment(grain.transforms.RandomMap):
    """One random crop, flips and a 90-degree rotation applied identically to every spatial field.

    `crop_size`: `(h, w)` or None (no crop). `rot90` needs a square crop (or None: then the
    rotation may change the shape, fine for batch size 1 only).
    Output fields `(h, w, C) float32`.
    """
    crop_size: tuple[int, int] | None = (256, 256)
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True

    def __post_init__(self):
        if self.crop_size is not None and self.rot90 and self.crop_size[0] != self.crop_size[1]:
            raise ValueError(f"rot90 needs a square crop, got {self.crop_size}")

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        keys = _spatial(element)
        h, w = np.shape(element[keys[0]])[:2]
        views = {k: element[k] for k in keys}
        if self.crop_size is not None:
            ch, cw = self.crop_size
            if h < ch or w < cw:
                raise DataError(f"{element.get('name', '?')}: image {h}x{w} smaller than crop "
                                f"{ch}x{cw} (config input.crop_size)")
            y = int(rng.integers(0, h - ch + 1))
            x = int(rng.integers(0, w - cw + 1))
            views = {k: v[y:y + ch, x:x + cw] for k, v in views.items()}
        flip_h = self.hflip and rng.random() < 0.5
        flip_v = self.vflip and rng.random() < 0.5
        k90 = int(rng.integers(0, 4)) if self.rot90 else 0
        out = dict(element)
        for k, v in views.items():
            if flip_h:
                v = v[:, ::-1]
            if flip_v:
                v = v[::-1]
            if k90:
                v = np.rot90(v, k90, axes=(0, 1))
            out[k] = np.ascontiguousarray(image_io.to_unit(np.asarray(v)))
        return out


def _drop_names(ex: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ex.items() if k != "name"}


def resolve_shard(shard_index: int | None, shard_count: int | None,
                  shard_options: grain.sharding.ShardOptions | None,
                  drop_remainder: bool) -> tuple[int, int]:
    """Explicit (index, count) if given, else `shard_options`, else one shard per JAX process."""
    if shard_index is not None or shard_count is not None:
        if shard_index is None or shard_count is None or not 0 <= shard_index < shard_count:
            raise ValueError(f"bad shard {shard_index} of {shard_count}")
        return shard_index, shard_count
    opts = shard_options or grain.sharding.ShardByJaxProcess(drop_remainder=drop_remainder)
    return opts.shard_index, opts.shard_count


def shard(ds: grain.MapDataset, index: int, count: int, drop_remainder: bool
          ) -> grain.MapDataset:
    """Strided shard `index::count`; `drop_remainder` trims so every shard has equal length."""
    if count == 1:
        return ds
    stop = (len(ds) // count) * count if drop_remainder else len(ds)
    if stop == 0:
        raise ValueError(f"dataset of {len(ds)} examples cannot fill {count} shards")
    return ds[index:stop:count]


def _own_memory(batch: dict[str, Any]) -> dict[str, Any]:
    """Copies a batch out of grain's shared memory into ordinary arrays."""
    return {k: np.array(v) for k, v in batch.items()}


_LIVE_WORKER_ITERATORS: weakref.WeakSet = weakref.WeakSet()
# grain methods whose teardown errors are harmless once `_close_worker_iterators` has run.
_GRAIN_DELS = frozenset({"DatasetIterator.__del__", "SharedMemoryArray.__del__"})


def _quiet_grain_teardown(unraisable: Any, _previous: Any = None, _sys: Any = sys,
                          _names: frozenset = _GRAIN_DELS) -> None:
    """`sys.unraisablehook` that drops grain `__del__` errors raised during interpreter teardown.

    Defaults bind everything it needs: module globals are None by the time it runs.
    """
    name = getattr(unraisable.object, "__qualname__", None)
    if not (_sys.is_finalizing() and name in _names
            and issubclass(unraisable.exc_type, AttributeError)):
        (_previous or _sys.__unraisablehook__)(unraisable)


@atexit.register
def _close_worker_iterators() -> None:
    """Closes the worker pipelines still referenced at exit, while the interpreter is whole.

    grain 0.2.18 leaves this to `__del__`, which at interpreter shutdown runs after module globals
    are cleared: a "leaked shared_memory objects" warning and `AttributeError` tracebacks from
    `SharedMemoryArray.__del__` / `DatasetIterator.__del__` (google/grain#398, #1031). Closing
    here stops the workers and unlinks every prefetched batch; the `close()` that grain's
    `__del__` repeats during teardown then has nothing left to free, and its AttributeError
    (grain's bug, harmless now) is silenced.
    """
    iterators = list(_LIVE_WORKER_ITERATORS)
    if not iterators:
        return
    for iterator in iterators:
        iterator.close()
    sys.unraisablehook = functools.partial(_quiet_grain_teardown, _previous=sys.unraisablehook)


class _ClosedAtExit(grain.IterDataset):
    """`parent` whose iterators are closed at interpreter exit if the caller has not."""

    def __iter__(self) -> Iterator[Any]:
        iterator = self._parent.__iter__()
        _LIVE_WORKER_ITERATORS.add(iterator)
        return iterator


def train_dataset(source: Sequence[Any], *, batch_size: int, crop_size: int | tuple[int, int]
                  | None = 256, seed: int = 0, hflip: bool = True, vflip: bool = True,
                  rot90: bool = True, num_epochs: int | None = None, worker_count: int = 0,
                  worker_buffer_size: int = 2, read_threads: int = 2, keep_names: bool = False,
                  shard_index: int | None = None, shard_count: int | None = None,
                  shard_options: grain.sharding.ShardOptions | None = None,
                  drop_remainder: bool = True) -> grain.IterDataset:
    """Training pipeline over a random-access source.

    `batch_size` is per process. Yields dicts of `(batch_size, h, w, C) float32` (`blur`,
    `sharp`, plus `depth`/`mask`/`image`/`valid` when the source has them; `name` if
    `keep_names`). `num_epochs=None` repeats forever, reshuffling each epoch.
    `worker_count > 0` decodes in that many processes (`mp_prefetch`); output does not depend on
    it. Batches from workers are copied out of shared memory (a copy costs little next to the
    decode) so they live like any array; iterators close at exit if not closed before (`close()`
    frees the workers earlier).
    """
    if isinstance(crop_size, int):
        crop_size = (crop_size, crop_size)
    elif crop_size is not None:
        crop_size = tuple(int(c) for c in crop_size)  # e.g. a list from a config
    index, count = resolve_shard(shard_index, shard_count, shard_options, drop_remainder)
    ds = shard(grain.MapDataset.source(source), index, count, drop_remainder)
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.random_map(PairedAugment(crop_size, hflip, vflip, rot90), seed=seed)
    if not keep_names:
        ds = ds.map(_drop_names)
    # Batching the MapDataset (before to_iter_dataset) makes each worker produce whole batches
    # in turn, so the batch sequence is the same for any worker count.
    ds = ds.batch(batch_size, drop_remainder=True)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=max(2, read_threads)))
    return with_worker_processes(it, worker_count, worker_buffer_size)


def with_worker_processes(it: grain.IterDataset, worker_count: int,
                          worker_buffer_size: int = 1) -> grain.IterDataset:
    """`it` prefetched by `worker_count` processes (0 = unchanged), with batches copied out of
    grain's shared memory and the workers closed at interpreter exit."""
    if worker_count <= 0:
        return it
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside absl.app
        flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                     per_worker_buffer_size=worker_buffer_size))
    return _ClosedAtExit(it.map(_own_memory))


def eval_dataset(source: Sequence[Any], *, shard_index: int | None = None,
                 shard_count: int | None = None,
                 shard_options: grain.sharding.ShardOptions | None = None) -> grain.MapDataset:
    """Evaluation: full images one at a time, in source order, no augmentation.

    Element `i` is `{blur, sharp (H, W, 3) float32, ..., name}` for example `index + i * count`.
    Shards are disjoint and together cover every example (no remainder dropped). Iterate it
    directly, or `.to_iter_dataset(grain.ReadOptions(...))` to decode ahead in threads.
    """
    index, count = resolve_shard(shard_index, shard_count, shard_options, False)
    return shard(grain.MapDataset.source(source), index, count, False).map(to_float)

