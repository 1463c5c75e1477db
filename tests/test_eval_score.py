"""The score CLI: matching by name, errors for unmatched/mis-sized files, numbers per protocol."""
from __future__ import annotations

import csv

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data

from radblur_jax.eval import align, metrics, score

H, W = 48, 64


@pytest.fixture()
def dirs(tmp_path):
    """gt/ and pred/ with three photo crops (pred: blurred; one pair as .jpg vs .png, one in a
    subfolder)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    (gt / "sub").mkdir(parents=True)
    (pred / "sub").mkdir(parents=True)
    names = {"a": data.astronaut()[60:60 + H, 200:200 + W], "sub/b": data.coffee()[:H, :W],
             "c": data.chelsea()[100:100 + H, 150:150 + W]}
    for name, img in names.items():
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(gt / f"{name}.png"), bgr)
        ext = ".jpg" if name == "c" else ".png"
        params = [cv2.IMWRITE_JPEG_QUALITY, 98] if ext == ".jpg" else []
        cv2.imwrite(str(pred / f"{name}{ext}"), cv2.GaussianBlur(bgr, (0, 0), 1.2), params)
    return pred, gt


def _load(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def test_gopro_scores_match_metric_functions(dirs, tmp_path, capsys):
    pred, gt = dirs
    out_csv = tmp_path / "s.csv"
    assert score.main(["--pred", str(pred), "--gt", str(gt), "--protocol", "gopro",
                       "--csv", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["a", "c", "sub/b"]
    for r, p, g in zip(rows, ["a.png", "c.jpg", "sub/b.png"], ["a.png", "c.png", "sub/b.png"]):
        x, y = jnp.asarray(_load(pred / p))[None], jnp.asarray(_load(gt / g))[None]
        assert float(r["psnr"]) == pytest.approx(float(metrics.psnr(x, y)[0]), abs=1e-5)
        assert float(r["ssim"]) == pytest.approx(float(metrics.ssim(x, y, mode="3d")[0]),
                                                 abs=1e-6)
    mean_psnr = np.mean([float(r["psnr"]) for r in rows])
    assert f"{mean_psnr:.2f} / " in printed and "3-D Gaussian SSIM" in printed


def test_per_channel_option(dirs, tmp_path):
    pred, gt = dirs
    rows = score.score_dirs(str(pred), str(gt), "gopro", ssim_mode="per_channel")
    x, y = jnp.asarray(_load(pred / "a.png"))[None], jnp.asarray(_load(gt / "a.png"))[None]
    assert rows[0]["ssim"] == pytest.approx(float(metrics.ssim(x, y, mode="per_channel")[0]),
                                            abs=1e-6)


def test_realblur_and_rsblur(dirs, tmp_path, capsys):
    pred, gt = dirs
    rows = score.score_dirs(str(pred), str(gt), "realblur")
    want = align.realblur_scores(_load(pred / "a.png"), _load(gt / "a.png"))
    assert rows[0]["psnr"] == pytest.approx(want["psnr"], abs=1e-9)
    assert rows[0]["ssim"] == pytest.approx(want["ssim"], abs=1e-9)
    sat = tmp_path / "sat.txt"
    sat.write_text("RSBlur/sub/b.png\n")
    assert score.main(["--pred", str(pred), "--gt", str(gt), "--protocol", "rsblur",
                       "--saturated", str(sat), "--csv", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out
    assert "| method | all | saturated | non-saturated |" in out
    with open(tmp_path / "r.csv") as f:
        flags = {r["name"]: r["saturated"] for r in csv.DictReader(f)}
    assert flags == {"a": "False", "c": "False", "sub/b": "True"}


def test_unmatched_and_missized_files_are_errors(dirs, capsys):
    pred, gt = dirs
    (pred / "extra.png").write_bytes((gt / "a.png").read_bytes())
    assert score.main(["--pred", str(pred), "--gt", str(gt), "--protocol", "gopro"]) == 2
    err = capsys.readouterr().err
    assert "unmatched files" in err and "extra.png" in err
    (pred / "extra.png").unlink()
    cv2.imwrite(str(pred / "a.png"), np.zeros((H, W + 1, 3), np.uint8))
    assert score.main(["--pred", str(pred), "--gt", str(gt), "--protocol", "gopro"]) == 2
    err = capsys.readouterr().err
    assert "size mismatch" in err and "a.png" in err
    with pytest.raises(SystemExit) as e:
        score.main(["--pred", str(pred), "--gt", str(gt), "--protocol", "nope"])
    assert e.value.code == 2


def test_identical_outputs_are_counted_not_dropped(dirs, capsys):
    """An output identical to its ground truth has PSNR inf: the table's mean is over the
    others, and a note says how many were left out."""
    pred, gt = dirs
    (pred / "a.png").write_bytes((gt / "a.png").read_bytes())
    assert score.main(["--pred", str(pred), "--gt", str(gt), "--protocol", "gopro"]) == 0
    out = capsys.readouterr().out
    rows = score.score_dirs(str(pred), str(gt), "gopro")
    assert rows[0]["psnr"] == float("inf")
    assert f"{np.mean([r['psnr'] for r in rows[1:]]):.2f} / " in out
    assert ("PSNR mean over 2 of 3 images; 1 infinite (output identical to the ground truth) "
            "left out.") in out


def test_saturated_list_matching_nothing_is_an_error(dirs, tmp_path, capsys):
    """A list whose names match no image would make every image 'non-saturated'."""
    pred, gt = dirs
    sat = tmp_path / "sat.txt"
    sat.write_text("RSBlur/0001/000022/gt/gt_sharp.png RSBlur/0001/000022/real_blur/x.png\n")
    out_csv = tmp_path / "r.csv"
    assert score.main(["--pred", str(pred), "--gt", str(gt), "--protocol", "rsblur",
                       "--saturated", str(sat), "--csv", str(out_csv)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--saturated: none of the 3 images matches" in err[0]
    assert "RSBlur/0001/000022/gt/gt_sharp" in err[0] and "e.g. a" in err[0]
    assert not out_csv.exists()
