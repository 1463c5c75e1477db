"""Training and validation input: the global example order, split into per-process rows.

Global stream: `source -> shuffle(seed) -> repeat -> random_map(augment)`, so element `g`
(and its random crop) depends only on `(seed, g)`. Global batch `k` is elements
`[k * B, (k + 1) * B)`; process `p` of `P` reads only its rows `[p * B/P, (p + 1) * B/P)`, as
local batch `k * P + p` of the stream batched by `B/P`. The global batches, and so training,
are the same for any number of processes; `iterator.get_state()` resumes on the exact next batch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import grain
import ml_collections
import numpy as np

from radblur_jax.data import pipeline
from radblur_jax.data.pipeline import PairedAugment, eval_dataset
from radblur_jax.data.sources import make_source, resolve_spec


@dataclasses.dataclass(frozen=True)
class _Select(grain.transforms.Map):
    fields: tuple[str, ...]

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.fields if k not in element]
        if missing:
            raise KeyError(f"dataset examples lack fields {missing}; have {sorted(element)}")
        return {k: element[k] for k in self.fields}


def local_batch_size(global_batch: int, process_count: int) -> int:
    if global_batch % process_count:
        raise ValueError(f"config.train.batch_size={global_batch} is not divisible by the "
                         f"{process_count} processes")
    return global_batch // process_count


def train_iterator(config: ml_collections.ConfigDict, fields: tuple[str, ...],
                   process_index: int, process_count: int) -> grain.DatasetIterator:
    """This process's rows of each global batch: dicts of `fields`, each
    `(B/P, h, w, C) float32`."""
    source = make_source(resolve_spec(config.data))
    local = local_batch_size(int(config.train.batch_size), process_count)
    crop = config.input.crop_size
    crop = (int(crop), int(crop)) if isinstance(crop, int) else tuple(int(c) for c in crop)
    ds = grain.MapDataset.source(source).shuffle(seed=int(config.seed)).repeat(None)
    ds = ds.random_map(PairedAugment(crop, rot90=crop[0] == crop[1]), seed=int(config.seed))
    ds = ds.map(_Select(tuple(fields))).batch(local, drop_remainder=True)
    ds = ds[process_index::process_count]
    threads = int(config.input.read_threads)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                              prefetch_buffer_size=max(2, threads)))
    return iter(pipeline.with_worker_processes(it, int(config.input.worker_count)))


def _center_crop(x: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, x0 = (x.shape[0] - h) // 2, (x.shape[1] - w) // 2
    return x[y0:y0 + h, x0:x0 + w]


def eval_batches(config: ml_collections.ConfigDict, fields: tuple[str, ...], multiple: int = 1
                 ) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Validation batches `(dict of fields, each (n, H, W, C) float32, number of real images)`.

    Every process reads the same images (validation sets are small). Images are centre-cropped
    to `eval.crop` (0 = full) and to a multiple of `multiple`; a last short batch is padded by
    repeating its final image (count the real ones only).
    """
    source = make_source(resolve_spec(config.eval_data))
    n = len(source) if not config.eval.num_images else min(len(source), config.eval.num_images)
    bs = int(config.eval.batch_size)
    ds = eval_dataset(source, shard_index=0, shard_count=1)
    items = []
    for i in range(n):
        ex = ds[i]
        h, w = ex[fields[0]].shape[:2]
        if config.eval.crop:
            h, w = min(h, int(config.eval.crop)), min(w, int(config.eval.crop))
        h, w = h - h % multiple, w - w % multiple
        items.append({k: _center_crop(np.asarray(ex[k], np.float32), h, w) for k in fields})
        if len(items) == bs or i == n - 1:
            real = len(items)
            items += [items[-1]] * (bs - real)
            yield {k: np.stack([it[k] for it in items]) for k in fields}, real
            items = []
