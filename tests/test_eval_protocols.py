"""eval.protocols: the dataset -> protocol tie, and means that say what they are over."""
from __future__ import annotations

import numpy as np
import pytest

from radblur_jax.eval import protocols
from radblur_jax.eval.summary import summary_markdown


def test_mean_scores_count_what_they_leave_out():
    rows = [{"psnr": 30.0, "ssim": 0.9}, {"psnr": float("inf"), "ssim": 1.0},
            {"psnr": 20.0, "ssim": float("nan")}, {"psnr": float("nan"), "ssim": 0.5},
            {"ssim": 0.7}]
    m = protocols.mean_scores(rows, ("psnr", "ssim", "abs_rel"))
    assert m == {"count": 5, "psnr": 25.0, "psnr_infinite": 1, "psnr_missing": 2,
                 "ssim": pytest.approx(np.mean([0.9, 1.0, 0.5, 0.7])), "ssim_missing": 1}
    assert protocols.mean_notes(m, label="restored: ") == [
        "restored: PSNR mean over 2 of 5 images; 1 infinite (output identical to the ground "
        "truth) and 2 missing or NaN left out.",
        "restored: SSIM mean over 4 of 5 images; 1 missing or NaN left out."]
    clean = protocols.mean_scores(rows[:1], ("psnr", "ssim"))
    assert clean == {"count": 1, "psnr": 30.0, "ssim": 0.9}
    assert protocols.mean_notes(clean) == []
    only_inf = protocols.mean_scores(rows[1:2], ("psnr",))
    assert only_inf == {"count": 1, "psnr_infinite": 1}  # no mean to give, and it says so


def test_summary_table_says_what_each_mean_is_over():
    rows = [{"psnr": 31.0, "ssim": 0.95}, {"psnr": float("inf"), "ssim": 1.0}]
    summary = {"model": "m", "dataset": "gopro", "split": "test", "protocol": "gopro",
               "psnr": "p", "ssim": "s", "tile": 0, "overlap": 32, "self_ensemble": False,
               "seconds_total": 1.0, "devices": 1,
               "restored": protocols.mean_scores(rows, ("psnr", "ssim")),
               "identity": protocols.mean_scores(rows[:1], ("psnr", "ssim"))}
    table = summary_markdown(summary)
    assert "| m | 31.00 / 0.9750 |" in table
    assert ("restored: PSNR mean over 1 of 2 images; 1 infinite (output identical to the "
            "ground truth) left out.") in table
    assert "identity:" not in table


@pytest.mark.parametrize("dataset,want", [
    ("gopro", "gopro"), ("hide", "gopro"), ("reds", "gopro"), ("realblur_j", "realblur"),
    ("realblur_r", "realblur"), ("rsblur", "rsblur"), ("synthetic", "gopro"),
    ("paired_folder", "gopro"), (None, "gopro")])
def test_protocol_follows_the_dataset(dataset, want):
    assert protocols.protocol_for(dataset) == want
    assert protocols.protocol_for(dataset, want) == want


def test_protocol_contradicting_a_benchmark_is_an_error():
    with pytest.raises(ValueError, match="protocol 'gopro' contradicts dataset 'realblur_j'.*"
                                         "'realblur'"):
        protocols.protocol_for("realblur_j", "gopro")
    with pytest.raises(ValueError, match="contradicts dataset 'gopro'"):
        protocols.protocol_for("gopro", "rsblur")
    with pytest.raises(ValueError, match="unknown protocol 'kitti'"):
        protocols.protocol_for("gopro", "kitti")
    # Sets without a published protocol take any.
    assert protocols.protocol_for("paired_folder", "realblur") == "realblur"
    assert protocols.protocol_for("synthetic", "rsblur") == "rsblur"
