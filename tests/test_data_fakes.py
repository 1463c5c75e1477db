"""Small fake dataset trees in each real layout, built from scikit-image photos (helpers only).

Two kinds of frames:
- `photo_pair(i)`: a photo cut and resized to 48x64, blur = 5x5 box filter of it;
- `coord_pair(i)`: sharp encodes (row, col, example id) in its channels and blur = 255 - sharp,
  so alignment through any crop/flip/rotation is checkable by content.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

H, W = 48, 64
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def photo(i: int, h: int = H, w: int = W) -> np.ndarray:
    """`(h, w, 3) uint8` RGB crop of a packaged photo."""
    from skimage import data  # pylint: disable=import-outside-toplevel
    img = getattr(data, _PHOTOS[i % len(_PHOTOS)])()
    y0 = (i * 17) % max(1, img.shape[0] // 3)
    img = img[y0:, :, :3]
    return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_AREA)


def photo_pair(i: int, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    sharp = photo(i, h, w)
    return cv2.blur(sharp, (5, 5)), sharp


def coord_pair(i: int, h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    sharp = np.stack([yy, xx, np.full_like(yy, i)], -1).astype(np.uint8)
    return 255 - sharp, sharp


def coord_depth(i: int, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (1000.0 * i + 100.0 * yy + xx + 1.0).astype(np.float32)


def write_rgb(path: str, rgb: np.ndarray) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    bgr = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] == 3 else rgb
    assert cv2.imwrite(path, np.ascontiguousarray(bgr)), path
    return path


def pair(kind: str, i: int) -> tuple[np.ndarray, np.ndarray]:
    return coord_pair(i) if kind == "coord" else photo_pair(i)


def make_gopro(root: str, kind: str = "coord", flat: bool = False,
               scenes: dict[str, dict[str, int]] | None = None) -> str:
    """GOPRO_Large tree: scenes per split -> frame count (ids unique across the tree)."""
    scenes = scenes or {"train": {"GOPR0372_07_00": 3, "GOPR0374_11_00": 2},
                        "test": {"GOPR0384_11_00": 2}}
    k = 0
    for split, sc in scenes.items():
        for scene, n in sc.items():
            for f in range(n):
                b, s = pair(kind, k)
                name = f"{f + 1:06d}.png"
                if flat:
                    write_rgb(f"{root}/{split}/input/{scene}-{name}", b)
                    write_rgb(f"{root}/{split}/target/{scene}-{name}", s)
                else:
                    write_rgb(f"{root}/{split}/{scene}/blur/{name}", b)
                    write_rgb(f"{root}/{split}/{scene}/blur_gamma/{name}", b)
                    write_rgb(f"{root}/{split}/{scene}/sharp/{name}", s)
                k += 1
    return root


def make_hide(root: str, original: bool = True) -> str:
    """Original: test/{test-close-ups,test-long-shot}/*.png + GT/*.png; else test/{input,target}."""
    k = 0
    for sub, n in (("test-close-ups", 2), ("test-long-shot", 3)):
        for f in range(n):
            b, s = coord_pair(k)
            name = f"{sub[5:9]}{f:03d}.png"
            if original:
                write_rgb(f"{root}/test/{sub}/{name}", b)
                write_rgb(f"{root}/GT/{name}", s)
            else:
                write_rgb(f"{root}/test/input/{name}", b)
                write_rgb(f"{root}/test/target/{name}", s)
            k += 1
    return root


def make_reds(root: str, seqs: int = 2, frames: int = 20, jpeg: bool = False) -> str:
    k = 0
    for split in ("train", "val"):
        for q in range(seqs):
            for f in range(frames):
                b, s = coord_pair(k % 200)
                ext = "jpg" if jpeg else "png"
                blur_dir = f"{split}_blur" + ("_jpeg" if jpeg else "")
                write_rgb(f"{root}/{split}/{blur_dir}/{q:03d}/{f:08d}.{ext}", b)
                write_rgb(f"{root}/{split}/{split}_sharp/{q:03d}/{f:08d}.png", s)
                k += 1
    return root


def make_realblur(root: str, variant: str = "J", n_train: int = 4, n_test: int = 2) -> str:
    top = (f"RealBlur-{variant}_ECC_IMCORR_centroid_itensity_ref" if variant == "J"
           else "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref")
    k = 0
    for split, n in (("train", n_train), ("test", n_test)):
        lines = []
        for _ in range(n):
            scene = f"scene{k // 2:03d}"
            b, s = coord_pair(k)
            g = f"{top}/{scene}/gt/gt_{k % 2 + 1}.png"
            bl = f"{top}/{scene}/blur/blur_{k % 2 + 1}.png"
            write_rgb(f"{root}/{g}", s)
            write_rgb(f"{root}/{bl}", b)
            lines.append(f"{g} {bl}\n")
            k += 1
        with open(f"{root}/RealBlur_{variant}_{split}_list.txt", "w") as f:
            f.writelines(lines)
    return root


def make_rsblur(root: str) -> str:
    """`root` is the folder holding RSBlur/; datalists in root/datalist/RSBlur/."""
    os.makedirs(f"{root}/datalist/RSBlur", exist_ok=True)
    k = 0
    lists = {"real_train": 3, "real_val": 1, "real_test": 2}
    for lst, n in lists.items():
        lines = []
        for _ in range(n):
            d = f"RSBlur/{k // 3 + 1:04d}/{k + 1:06d}"
            b, s = coord_pair(k)
            write_rgb(f"{root}/{d}/gt/gt_sharp.png", s)
            write_rgb(f"{root}/{d}/real_blur/real_blur.png", b)
            write_rgb(f"{root}/{d}/avg65_img/avg_blur.png", b)
            m = np.zeros((H, W), np.uint8)
            m[: H // 2] = 255
            os.makedirs(f"{root}/{d}/avg65_mask_100", exist_ok=True)
            cv2.imwrite(f"{root}/{d}/avg65_mask_100/mask.png", m)
            lines.append(f"{d}/gt/gt_sharp.png {d}/real_blur/real_blur.png\n")
            k += 1
        with open(f"{root}/datalist/RSBlur/RSBlur_{lst}.txt", "w") as f:
            f.writelines(lines)
    with open(f"{root}/datalist/RSBlur/RSBlur_real_test_saturation.txt", "w") as f:
        f.write(lines[0])
    return root


def make_synthetic(root: str, scenes: int = 2, frames: int = 3) -> str:
    k = 0
    for split in ("train", "test"):
        for sc in range(scenes):
            for f in range(frames):
                b, s = coord_pair(k)
                d = f"{root}/{split}/scene_{sc:04d}"
                write_rgb(f"{d}/blur/{f:06d}.png", b)
                write_rgb(f"{d}/sharp/{f:06d}.png", s)
                os.makedirs(f"{d}/depth", exist_ok=True)
                np.save(f"{d}/depth/{f:06d}.npy", coord_depth(k))
                k += 1
    with open(f"{root}/manifest.json", "w") as f:
        f.write('{"fake": true}')
    return root


def check_coord_alignment(ex: dict, depth: bool = False) -> None:
    """Asserts blur == 1 - sharp and sharp/depth encode the same pixel grid (any flip/rotation)."""
    blur, sharp = np.asarray(ex["blur"]), np.asarray(ex["sharp"])
    np.testing.assert_allclose(blur, 1.0 - sharp, atol=1e-6)
    ys, xs = np.rint(sharp[..., 0] * 255), np.rint(sharp[..., 1] * 255)
    # neighbours along each axis differ by one step in exactly one coordinate
    assert np.all(np.abs(np.diff(ys, axis=0)) + np.abs(np.diff(xs, axis=0)) == 1)
    assert np.all(np.abs(np.diff(ys, axis=1)) + np.abs(np.diff(xs, axis=1)) == 1)
    if depth:
        ids = np.rint(sharp[..., 2] * 255)
        expect = 1000.0 * ids + 100.0 * ys + xs + 1.0
        np.testing.assert_array_equal(np.asarray(ex["depth"])[..., 0], expect)
