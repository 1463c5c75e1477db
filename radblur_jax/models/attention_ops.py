"""Multi-head attention kernels selected per backend.

`attention(q, k, v, impl)` takes `(B, T, H, Dh)` queries/keys/values and returns `(B, T, H, Dh)`,
softmax scale `Dh ** -0.5`, no mask. `impl`:
  - "xla":     `jax.nn.dot_product_attention(implementation="xla")`.
  - "cudnn":   the fused cuDNN kernel (GPU only).
  - "auto":    cudnn on GPU when the dtype allows it, else xla.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "auto") -> jax.Array:
    """Scaled dot-product attention over `(B, T, H, Dh)` arrays."""
    if impl == "auto":
        on_gpu = jax.default_backend() == "gpu"
        impl = "cudnn" if on_gpu and q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
    if impl in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(q, k, v, implementation=impl)
    raise ValueError(f"unknown attention impl {impl!r}; expected auto, xla or cudnn")
