"""radblur_jax: RADBlur deblurring in JAX/Flax. Sub-packages load on first use, so
`import radblur_jax; radblur_jax.convert.load_pretrained(...)` works without slowing the import."""
import importlib

_SUBPACKAGES = ("convert", "data", "eval", "models", "train")


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
