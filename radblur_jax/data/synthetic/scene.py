"""Layered RGB-D "dead leaves" scenes: textured shapes on fronto-parallel planes.

A scene is a list of ``Layer``s ordered far to near: an opaque background plane at the far depth
that covers the frame plus a margin, then one textured shape (disc/ellipse, rotated rectangle or
star-shaped polygon) per layer at its own depth. Colours are linear light and not premultiplied:
each shape's texture fills its whole bounding box and its alpha mask cuts it out, so warping colour
and alpha separately and blending with ``over`` stays exact at the edges.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from radblur_jax.data.synthetic.textures import cut_texture

_AA_SHIFT = 4  # cv2 drawing: sub-pixel coordinates with 4 fractional bits


@dataclasses.dataclass(frozen=True)
class Layer:
    """One depth plane of a scene.

    colour: ``(h, w, 3)`` float32 linear RGB (not premultiplied); alpha: ``(h, w)`` float32 in
    [0, 1]. x0, y0: position of pixel ``[0, 0]`` in sharp-frame pixel coordinates (may be
    negative). depth: distance of the plane (larger = farther). opaque: alpha is 1 everywhere.
    """

    colour: np.ndarray
    alpha: np.ndarray
    x0: int
    y0: int
    depth: float
    opaque: bool = False


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB transfer function inverse; float array in [0, 1] -> linear light."""
    x = np.asarray(x, np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """sRGB transfer function; linear light in [0, 1] -> sRGB float32 in [0, 1]."""
    x = np.clip(np.asarray(x, np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92,
                    1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


def boost_highlights(linear: np.ndarray, threshold: float, gain: float) -> np.ndarray:
    """RSBlur-style saturation: scale bright linear pixels up (smoothly) so blur clips later.

    Pixels whose max channel exceeds ``threshold`` are multiplied by a factor ramping from 1 at
    the threshold to ``gain`` at 1.0. ``linear``: ``(h, w, 3)`` float32.
    """
    if gain <= 1.0:
        return linear
    peak = linear.max(axis=-1, keepdims=True)
    ramp = np.clip((peak - threshold) / max(1.0 - threshold, 1e-6), 0.0, 1.0)
    return (linear * (1.0 + (gain - 1.0) * ramp)).astype(np.float32)


def _shape_mask(rng: np.random.Generator, radius: float) -> np.ndarray:
    """An anti-aliased mask ``(h, w)`` float32 in [0, 1] of a random shape of about ``radius``."""
    size = int(math.ceil(2 * radius)) + 4
    centre = np.array([size / 2.0, size / 2.0])
    canvas = np.zeros((size, size), np.uint8)
    kind = rng.integers(3)
    one = 1 << _AA_SHIFT
    if kind == 0:  # disc / ellipse
        axes = (radius, radius * rng.uniform(0.45, 1.0))
        cv2.ellipse(canvas, tuple(int(round(c * one)) for c in centre),
                    tuple(int(round(a * one)) for a in axes), float(rng.uniform(0, 180)),
                    0, 360, 255, -1, cv2.LINE_AA, _AA_SHIFT)
    else:
        if kind == 1:  # rotated rectangle with corners on the circle of the radius
            half_angle = rng.uniform(0.35, 1.2)
            angles = np.array([half_angle, math.pi - half_angle,
                               math.pi + half_angle, 2 * math.pi - half_angle])
            radii = np.full(4, radius)
        else:  # star-shaped polygon (possibly concave)
            count = int(rng.integers(3, 9))
            angles = np.sort(rng.uniform(0, 2 * math.pi, count))
            radii = radius * rng.uniform(0.45, 1.0, count)
        angles = angles + rng.uniform(0, 2 * math.pi)
        pts = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [np.round(pts * one).astype(np.int32)], 255, cv2.LINE_AA, _AA_SHIFT)
    return canvas.astype(np.float32) / 255.0


def make_layer(rng: np.random.Generator, mask: np.ndarray, x0: int, y0: int, depth: float,
               saturation: tuple[float, float] = (1.0, 1.0), opaque: bool = False) -> Layer:
    """Fill ``mask`` ``(h, w)`` with a random photo texture and return it as a ``Layer``.

    ``saturation`` = ``(threshold, gain)`` for ``boost_highlights`` (gain 1 = off).
    """
    h, w = mask.shape
    colour = boost_highlights(srgb_to_linear(cut_texture(rng, h, w)), *saturation)
    return Layer(np.ascontiguousarray(colour, np.float32), np.ascontiguousarray(mask, np.float32),
                 int(x0), int(y0), float(depth), opaque)


def _light_layer(rng: np.random.Generator, short: int, cx: float, cy: float, depth: float,
                 gain: float) -> Layer:
    """A small disc of near-white light brighter than 1 in linear light (clips when blurred)."""
    radius = max(1.5, short * rng.uniform(0.005, 0.02))
    size = int(math.ceil(2 * radius)) + 4
    canvas = np.zeros((size, size), np.uint8)
    one = 1 << _AA_SHIFT
    cv2.circle(canvas, (size * one // 2, size * one // 2), int(radius * one), 255, -1,
               cv2.LINE_AA, _AA_SHIFT)
    tint = 1.0 - rng.uniform(0.0, 0.4, 3) ** 2
    colour = np.broadcast_to((tint * gain * rng.uniform(1.0, 3.0)).astype(np.float32),
                             (size, size, 3))
    return Layer(np.ascontiguousarray(colour), canvas.astype(np.float32) / 255.0,
                 int(round(cx - size / 2)), int(round(cy - size / 2)), float(depth))


def make_scene(rng: np.random.Generator, height: int, width: int, num_layers: int,
               depth_range: tuple[float, float], margin: int,
               radius_range: tuple[float, float] = (0.04, 0.35),
               saturation: tuple[float, float] = (1.0, 1.0), num_lights: int = 0) -> list[Layer]:
    """A random dead-leaves scene, far to near.

    The background (opaque, at ``depth_range[1]``) covers the frame plus ``margin`` pixels on each
    side. Shape layers get depths uniform in inverse depth over ``depth_range``, radii log-uniform
    in ``radius_range`` (fractions of ``min(height, width)``) and centres anywhere over the frame
    (a little beyond its edges too). ``num_lights`` small light discs (linear brightness
    ``saturation[1]`` to 3x that) are added at random depths.
    """
    near, far = depth_range
    bg_mask = np.ones((height + 2 * margin, width + 2 * margin), np.float32)
    layers = [make_layer(rng, bg_mask, -margin, -margin, far, saturation, opaque=True)]
    count = num_layers + num_lights
    disparity = rng.uniform(1.0 / far, 1.0 / near, count)
    is_light = rng.permutation(count) < num_lights
    order = np.argsort(disparity, kind="stable")  # far (small disparity) to near
    short = min(height, width)
    for i in order:
        depth = float(1.0 / disparity[i])
        cx, cy = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        if is_light[i]:
            layers.append(_light_layer(rng, short, cx, cy, depth, max(saturation[1], 1.0)))
            continue
        radius = short * math.exp(rng.uniform(math.log(radius_range[0]), math.log(radius_range[1])))
        mask = _shape_mask(rng, radius)
        x0 = int(round(cx - mask.shape[1] / 2))
        y0 = int(round(cy - mask.shape[0] / 2))
        layers.append(make_layer(rng, mask, x0, y0, depth, saturation))
    return layers


def _clip_box(layer: Layer, height: int, width: int):
    """Overlap of a layer with the frame: (frame slice, layer slice) or None."""
    h, w = layer.alpha.shape
    fy0, fx0 = max(layer.y0, 0), max(layer.x0, 0)
    fy1, fx1 = min(layer.y0 + h, height), min(layer.x0 + w, width)
    if fy0 >= fy1 or fx0 >= fx1:
        return None
    frame = (slice(fy0, fy1), slice(fx0, fx1))
    local = (slice(fy0 - layer.y0, fy1 - layer.y0), slice(fx0 - layer.x0, fx1 - layer.x0))
    return frame, local


def blend_over(colour: np.ndarray, alpha: np.ndarray, below: np.ndarray) -> np.ndarray:
    """``alpha * colour + (1 - alpha) * below``; ``(h, w, 3)``, ``(h, w)``, ``(h, w, 3)`` float32.

    ``cv2.blendLinear`` is about 10x faster than the numpy expression on sub-frame views.
    """
    return cv2.blendLinear(colour, below, alpha, 1.0 - alpha)


def composite_static(layers: list[Layer], height: int, width: int) -> np.ndarray:
    """The scene without motion (the sharp frame): ``(height, width, 3)`` float32 linear."""
    out = np.zeros((height, width, 3), np.float32)
    for layer in layers:
        box = _clip_box(layer, height, width)
        if box is None:
            continue
        frame, local = box
        if layer.opaque:
            out[frame] = layer.colour[local]
        else:
            out[frame] = blend_over(layer.colour[local], layer.alpha[local], out[frame])
    return out


def depth_map(layers: list[Layer], height: int, width: int) -> np.ndarray:
    """Depth of the front-most layer with alpha >= 0.5 per pixel: ``(height, width)`` float32."""
    depth = np.zeros((height, width), np.float32)
    for layer in layers:
        box = _clip_box(layer, height, width)
        if box is None:
            continue
        frame, local = box
        covered = layer.alpha[local] >= 0.5
        depth[frame] = np.where(covered, np.float32(layer.depth), depth[frame])
    return depth
