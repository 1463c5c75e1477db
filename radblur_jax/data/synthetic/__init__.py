"""The built-in depth-aware synthetic blur set.

Modules: `textures` (photographs from scikit-image's data folder, else procedural), `scene`
(layered dead-leaves RGB-D scenes), `render` (camera trajectories, blurred/sharp/depth pairs),
`writer` (datasets on disk in the GoPro layout, the embedded default set), `worker` (the worker
interpreter of `writer.write_dataset(..., workers=N)`), `photo_shake` (real photographs blurred
by uniform camera shake: a held-out check set in the paired_folder layout).

    from radblur_jax.data.synthetic import SyntheticParams, render_pair, ensure_default_synthetic
"""

from radblur_jax.data.synthetic.photo_shake import shake_pair, write_photo_shake_set
from radblur_jax.data.synthetic.render import SyntheticParams, render_pair
from radblur_jax.data.synthetic.writer import ensure_default_synthetic, write_dataset

__all__ = ["SyntheticParams", "ensure_default_synthetic", "render_pair", "shake_pair",
           "write_dataset", "write_photo_shake_set"]
