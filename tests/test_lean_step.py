"""The lean accelerator formulation (`conv_impl="lax"`, reversible decoder) has the gradients
of the formulation it replaced, computed here by plain autodiff: `lax.conv_general_dilated`
on concatenated channels for every convolution (then split), flax's LayerNorm formula and the
FFT branch channels-last; and of the CPU's `fast` forms. One lean gradient serves both
comparisons (a whole-network gradient costs tens of seconds of compile). The formulations, the
draw of params and images and the errors are `benchmarks/lean_gradients.py`'s, which gives the
same comparison for the larger presets."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from lean_gradients import PARTS, build_forms, measure, print_table  # noqa: E402


@pytest.mark.slow
def test_tiny_gradients_agree_across_formulations(capsys):
    """The `tiny` RADBlur's loss gradient (stem, ViT patch embedding, DPT, ADA, decoder) three
    ways, from one lean `lax` gradient: the lean step (reversible decoder) equals the
    pre-lean formulation by plain autodiff, and the CPU's `fast` forms (reversible) equal the
    lean step in outputs and gradients. (Reversible backprop equals autodiff with the fast
    forms: test_reversible.py.) Non-square images, padded inside to 48x64 (decoder) and 56x70
    (ViT); the init moved so that the residual scales that start at zero count."""
    assert build_forms("tiny")["lean"].backend.spectral_channels_first
    others = ("reference, autodiff", "fast")
    rows = measure("tiny", 1, 40, 56, against=others)
    assert [r["against"] for r in rows] == list(others)
    for err in rows:
        # No L1 term at its kink, where rounding alone would pick the sign of its gradient.
        assert err["near_kinks"] == 0, err
        assert err["outputs"] <= 1e-5 and err["loss"] <= 1e-6, err
        assert err["gradient"] <= 1e-5, err
        for part in PARTS:
            assert err[f"{part}_norm"] > 0.0, (part, err)
            assert err[part] <= 1e-5, (part, err)
    print_table(rows)
    table = capsys.readouterr().out
    assert all(f"| tiny | 0 | {form} | 0 | " in table for form in others), table
