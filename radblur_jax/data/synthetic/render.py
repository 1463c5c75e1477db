"""Depth-aware blur synthesis: blurred/sharp/depth triples from layered dead-leaves scenes.

Recipe (GoPro/RSBlur made depth-aware): a random smooth camera trajectory over the exposure;
each sub-frame warps every depth layer with parallax (camera translation scaled by
``depth_range[0] / depth``, i.e. proportional to inverse depth) plus a depth-independent shift
(yaw/pitch) and a roll about the image centre, composites far to near with each layer's alpha,
and the sub-frames are averaged in linear light. Then saturation clipping (highlights boosted
before the average, RSBlur-style), optional Poisson-Gaussian noise, and the sRGB gamma.
The sharp frame is the middle sub-frame; the depth map is the sharp frame's.

    from radblur_jax.data.synthetic import SyntheticParams, render_pair
    pair = render_pair(0, SyntheticParams(height=256, width=256))
    pair["blur"], pair["sharp"]   # (H, W, 3) float32 sRGB in [0, 1]
    pair["depth"]                 # (H, W) float32, larger = farther
    pair["trajectory"]            # (T, 5) float32: tx, ty, px, py (pixels), roll (radians)
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from radblur_jax.data.synthetic.scene import (
    Layer,
    blend_over,
    composite_static,
    depth_map,
    linear_to_srgb,
    make_scene,
)

_DENSE_STEPS = 64


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
    """Parameters of one synthetic pair (all lengths relative to the image unless noted).

    height, width: output size in pixels.
    num_layers: textured shapes in front of the background, one depth plane each.
    depth_range: (near, far) depths; the background sits at far.
    radius_range: shape radius range, fractions of min(height, width) (log-uniform).
    max_shift: largest blur extent caused by camera translation for a plane at the near depth,
        fraction of the width (a plane at depth d moves near / d as far).
    pan_shift: largest depth-independent shift (camera yaw/pitch), fraction of the width.
    max_rotation_deg: largest roll about the image centre over the exposure, degrees.
    min_motion: each motion magnitude is uniform in [min_motion, 1] times its maximum.
    inertia: momentum of the trajectory's random walk (0 = jerky, near 1 = smooth, straight).
    num_subframes: sub-frames per exposure; 0 = automatic, so that no point moves more than
        max_step_px between sub-frames (at most max_subframes).
    noise_prob: probability of adding noise; shot_noise: largest Poisson gain (variance =
        gain * signal, linear light); read_noise: largest Gaussian sigma (linear light).
    saturation_prob: probability of saturated highlights; linear pixels above
        saturation_threshold are boosted up to a gain drawn from saturation_gain, and 1 to
        max_lights small light discs (linear brightness > 1) are added; all clipped after the
        average, so highlights smear into saturated streaks.
    """

    height: int = 256
    width: int = 256
    num_layers: int = 16
    depth_range: tuple[float, float] = (1.0, 10.0)
    radius_range: tuple[float, float] = (0.04, 0.35)
    max_shift: float = 0.06
    pan_shift: float = 0.01
    max_rotation_deg: float = 1.0
    min_motion: float = 0.2
    inertia: float = 0.85
    num_subframes: int = 0
    max_step_px: float = 1.0
    max_subframes: int = 65
    noise_prob: float = 0.5
    shot_noise: float = 0.01
    read_noise: float = 0.005
    saturation_prob: float = 0.25
    saturation_threshold: float = 0.95
    saturation_gain: tuple[float, float] = (1.5, 4.0)
    max_lights: int = 4

    def __post_init__(self):
        if self.height < 8 or self.width < 8:
            raise ValueError(f"SyntheticParams: size must be at least 8x8, got "
                             f"{self.height}x{self.width}")
        if not 0 < self.depth_range[0] <= self.depth_range[1]:
            raise ValueError(f"SyntheticParams.depth_range: expected 0 < near <= far, got "
                             f"{self.depth_range}")
        if not 0 < self.radius_range[0] <= self.radius_range[1]:
            raise ValueError(f"SyntheticParams.radius_range: expected 0 < low <= high, got "
                             f"{self.radius_range}")
        if not 0 < self.saturation_gain[0] <= self.saturation_gain[1]:
            raise ValueError(f"SyntheticParams.saturation_gain: expected 0 < low <= high, got "
                             f"{self.saturation_gain}")
        rules = {"num_layers": (0, None), "num_subframes": (0, None), "max_lights": (0, None),
                 "max_subframes": (1, None), "max_step_px": (1e-6, None),
                 "max_shift": (0, None), "pan_shift": (0, None), "max_rotation_deg": (0, None),
                 "shot_noise": (0, None), "read_noise": (0, None), "min_motion": (0, 1),
                 "inertia": (0, 1), "noise_prob": (0, 1), "saturation_prob": (0, 1),
                 "saturation_threshold": (0, 1)}
        for name, (low, high) in rules.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                bound = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ValueError(f"SyntheticParams.{name}: expected {bound}, got {value}")
        # Tuples survive a JSON round trip (manifest) as lists: normalise back.
        for name in ("depth_range", "radius_range", "saturation_gain"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))


def _walk(rng: np.random.Generator, dims: int, inertia: float) -> np.ndarray:
    """Random walk with inertia: ``(_DENSE_STEPS, dims)`` positions starting at 0."""
    velocity = rng.standard_normal(dims)
    pos = np.zeros((_DENSE_STEPS, dims))
    for k in range(1, _DENSE_STEPS):
        velocity = inertia * velocity + (1.0 - inertia) * rng.standard_normal(dims) * 2.0
        pos[k] = pos[k - 1] + velocity
    return pos


def _extent(points: np.ndarray) -> float:
    """Largest distance between two points of ``(N, D)``."""
    diff = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diff ** 2).sum(-1)).max())


def sample_trajectory(rng: np.random.Generator, params: SyntheticParams) -> np.ndarray:
    """A smooth random camera trajectory, zero at the middle sub-frame.

    Returns ``(T, 5)`` float32 rows ``(tx, ty, px, py, roll)``: translation as the image shift of a
    plane at the near depth (pixels), depth-independent shift (pixels), roll (radians).
    """
    width, radius = params.width, 0.5 * math.hypot(params.height, params.width)
    targets = [params.max_shift * width, params.pan_shift * width,
               math.radians(params.max_rotation_deg)]
    parts = []
    for dims, target in zip((2, 2, 1), targets):
        walk = _walk(rng, dims, params.inertia)
        magnitude = target * rng.uniform(params.min_motion, 1.0)
        extent = _extent(walk)
        parts.append(walk * (magnitude / extent) if extent > 0 and magnitude > 0 else walk * 0.0)
    dense = np.concatenate(parts, axis=1)
    if params.num_subframes > 0:
        count = params.num_subframes
    else:
        step = np.diff(dense, axis=0)
        length = (np.linalg.norm(step[:, :2], axis=1) + np.linalg.norm(step[:, 2:4], axis=1)
                  + np.abs(step[:, 4]) * radius).sum()
        count = min(int(math.ceil(length / params.max_step_px)) + 1, params.max_subframes)
        count = count + 1 - count % 2  # odd, so the middle sub-frame is a real one
    t_dense = np.linspace(0.0, 1.0, _DENSE_STEPS)
    t = np.linspace(0.0, 1.0, count) if count > 1 else np.array([0.5])
    traj = np.stack([np.interp(t, t_dense, dense[:, j]) for j in range(5)], axis=1)
    return (traj - traj[count // 2]).astype(np.float32)


def _layer_matrix(layer: Layer, pose: np.ndarray, near: float, centre: np.ndarray) -> np.ndarray:
    """Affine map ``(2, 3)`` from layer-local pixel coordinates to the sub-frame's pixels."""
    tx, ty, px, py, roll = (float(v) for v in pose)
    scale = near / layer.depth
    rot = np.array([[math.cos(roll), -math.sin(roll)], [math.sin(roll), math.cos(roll)]])
    offset = np.array([layer.x0, layer.y0], np.float64)
    shift = np.array([scale * tx + px, scale * ty + py])
    return np.concatenate([rot, (rot @ (offset - centre) + centre + shift)[:, None]], axis=1)


def render_subframe(layers: list[Layer], pose: np.ndarray, height: int, width: int,
                    near: float) -> np.ndarray:
    """Composite the warped layers far to near at one camera pose.

    ``pose``: one trajectory row ``(5,)``. Returns ``(height, width, 3)`` float32 linear light.
    """
    out = np.zeros((height, width, 3), np.float32)
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    for layer in layers:
        mat = _layer_matrix(layer, pose, near, centre)
        h, w = layer.alpha.shape
        corners = mat[:, :2] @ np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1]]) + mat[:, 2:]
        x0 = max(int(math.floor(corners[0].min())) - 1, 0)
        y0 = max(int(math.floor(corners[1].min())) - 1, 0)
        x1 = min(int(math.ceil(corners[0].max())) + 2, width)
        y1 = min(int(math.ceil(corners[1].max())) + 2, height)
        if x0 >= x1 or y0 >= y1:
            continue
        mat = mat.copy()
        mat[:, 2] -= (x0, y0)
        if layer.opaque:  # covers the frame (see _margin): warp straight into the output
            if (x0, y0, x1, y1) == (0, 0, width, height):
                cv2.warpAffine(layer.colour, mat, (width, height), dst=out,
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            else:
                out[y0:y1, x0:x1] = cv2.warpAffine(layer.colour, mat, (x1 - x0, y1 - y0),
                                                   flags=cv2.INTER_LINEAR,
                                                   borderMode=cv2.BORDER_REPLICATE)
            continue
        size = (x1 - x0, y1 - y0)
        colour = cv2.warpAffine(layer.colour, mat, size, flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(layer.alpha, mat, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT)
        out[y0:y1, x0:x1] = blend_over(colour, alpha, out[y0:y1, x0:x1])
    return out


def render_layers(layers: list[Layer], trajectory: np.ndarray, height: int, width: int,
                  near: float) -> tuple[np.ndarray, np.ndarray]:
    """Blur (mean of sub-frames) and sharp (middle sub-frame) in linear light, unclipped.

    ``trajectory``: ``(T, 5)`` with a zero middle row. Returns two ``(height, width, 3)`` float32.
    """
    sharp = composite_static(layers, height, width)
    mid = len(trajectory) // 2
    total = np.zeros((height, width, 3), np.float32)
    for k, pose in enumerate(trajectory):
        still = k == mid or not np.any(pose)
        total += sharp if still else render_subframe(layers, pose, height, width, near)
    return total / np.float32(len(trajectory)), sharp


def _margin(trajectory: np.ndarray, height: int, width: int) -> int:
    """Pixels the background must extend beyond the frame to cover every sub-frame."""
    radius = 0.5 * math.hypot(height, width)
    reach = (np.linalg.norm(trajectory[:, :2], axis=1) + np.linalg.norm(trajectory[:, 2:4], axis=1)
             + np.abs(trajectory[:, 4]) * radius)
    return int(math.ceil(float(reach.max()))) + 2


def add_noise(rng: np.random.Generator, linear: np.ndarray, shot_gain: float,
              read_sigma: float) -> np.ndarray:
    """Poisson (variance ``shot_gain * x``) plus Gaussian noise on linear light, clipped to
    [0, 1]."""
    out = linear.astype(np.float64)
    if shot_gain > 0:
        out = rng.poisson(out / shot_gain) * shot_gain
    if read_sigma > 0:
        out = out + rng.normal(0.0, read_sigma, out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def render_pair(rng: np.random.Generator | int | np.random.SeedSequence,
                params: SyntheticParams = SyntheticParams()) -> dict[str, np.ndarray]:
    """Render one blurred/sharp pair with its depth map and camera trajectory.

    ``rng``: a Generator, an int seed or a SeedSequence (same seed -> same arrays).
    Returns ``blur``, ``sharp``: ``(H, W, 3)`` float32 sRGB in [0, 1]; ``depth``: ``(H, W)``
    float32 (larger = farther); ``trajectory``: ``(T, 5)`` float32 (see ``sample_trajectory``).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    h, w, near = params.height, params.width, params.depth_range[0]
    trajectory = sample_trajectory(rng, params)
    saturate = rng.random() < params.saturation_prob
    gain = rng.uniform(*params.saturation_gain)
    lights = int(rng.integers(1, params.max_lights + 1)) if params.max_lights > 0 else 0
    saturation = (params.saturation_threshold, gain) if saturate else (1.0, 1.0)
    layers = make_scene(rng, h, w, params.num_layers, params.depth_range,
                        _margin(trajectory, h, w), params.radius_range, saturation,
                        lights if saturate else 0)
    blur, sharp = render_layers(layers, trajectory, h, w, near)
    blur, sharp = np.clip(blur, 0.0, 1.0), np.clip(sharp, 0.0, 1.0)
    noisy = rng.random() < params.noise_prob
    shot, read = rng.uniform(0.0, params.shot_noise), rng.uniform(0.0, params.read_noise)
    if noisy:
        blur = add_noise(rng, blur, shot, read)
    return {
        "blur": linear_to_srgb(blur),
        "sharp": linear_to_srgb(sharp),
        "depth": depth_map(layers, h, w),
        "trajectory": trajectory,
    }

