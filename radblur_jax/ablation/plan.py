"""What the depth ablation trains: data mixes, the four variants, and each run's command.

Variants (stage B, same preset, data, steps and seeds):
  a  random encoder, no depth fusion (`decoder.depth_fusion="none"`)
  b  random encoder, depth fusion on
  c  encoder + depth branch from stage A on the mix's RGB-D scenes, fusion on
  d  stage-A encoder + depth branch, fusion off

The seed sets the init, the data order and the crops (`config.seed`); the test split is fixed.
Each run is a plain `python -m radblur_jax.main` in its own workdir, so a killed run resumes from
its last checkpoint when the same command runs again.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from radblur_jax.data.synthetic.render import SyntheticParams


@dataclasses.dataclass(frozen=True)
class Mix:
    """A synthetic data mix: generator parameters (`SyntheticParams` fields) and a description."""
    name: str
    about: str
    overrides: dict


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    about: str
    fusion: bool      # decoder.depth_fusion "attention" (True) or "none"
    pretrained: bool  # encoder + depth branch from the mix's stage-A run


MIXES = (
    Mix("default", "the built-in synthetic set (generated with the package's defaults)", {}),
    # Camera translation only, nearer and farther planes: parallax (shift ~ 1 / depth) is the
    # whole blur, so the near/far blur contrast is as large as the generator makes it.
    Mix("strong_parallax", "camera translation only (no pan, no roll), depth range 1-30, "
        "larger and never-small motion",
        dict(max_shift=0.08, pan_shift=0.0, max_rotation_deg=0.0, depth_range=(1.0, 30.0),
             min_motion=0.5)),
)
VARIANTS = (
    Variant("a", "random encoder, fusion off", fusion=False, pretrained=False),
    Variant("b", "random encoder, fusion on", fusion=True, pretrained=False),
    Variant("c", "stage-A encoder + depth branch, fusion on", fusion=True, pretrained=True),
    Variant("d", "stage-A encoder + depth branch, fusion off", fusion=False, pretrained=True),
)
# The built-in set's size and seed (synthetic/writer.py), for the mixes generated here.
NUM_TRAIN, NUM_TEST, SIZE, DATA_SEED = 64, 16, 256, 0


@dataclasses.dataclass(frozen=True)
class Plan:
    """The whole study's settings; everything a run's command depends on."""
    out: Path
    seeds: tuple[int, ...] = (0, 1, 2)
    stage_a_steps: int = 300
    stage_b_steps: int = 400
    eval_every: int = 100
    mixes: tuple[Mix, ...] = MIXES
    variants: tuple[Variant, ...] = VARIANTS

    def mix_params(self, mix: Mix) -> SyntheticParams:
        return SyntheticParams(height=SIZE, width=SIZE, **mix.overrides)

    def data_root(self, mix: Mix) -> str:
        """`""` (the built-in set) for the default mix, else the set generated under `out`."""
        return "" if not mix.overrides else str(self.out / "data" / mix.name)

    def stage_a_dir(self, mix: Mix, seed: int) -> Path:
        return self.out / "runs" / mix.name / "stage_a" / f"seed{seed}"

    def stage_b_dir(self, mix: Mix, variant: Variant, seed: int) -> Path:
        return self.out / "runs" / mix.name / variant.name / f"seed{seed}"

    def _common(self, workdir: Path, mix: Mix, seed: int) -> list[str]:
        root = self.data_root(mix)
        return [f"--workdir={workdir}", f"--config.seed={seed}",
                f"--config.data.root={root}", f"--config.eval_data.root={root}",
                f"--compilation_cache={self.out / 'xla_cache'}"]

    def stage_a_command(self, mix: Mix, seed: int) -> list[str]:
        arg = (f"tiny,num_steps={self.stage_a_steps},eval_every={self.eval_every},"
               f"checkpoint_every={self.eval_every}")
        return [sys.executable, "-m", "radblur_jax.main",
                f"--config={_config_file('depth_pretrain.py')}:{arg}",
                *self._common(self.stage_a_dir(mix, seed), mix, seed)]

    def stage_b_command(self, mix: Mix, variant: Variant, seed: int) -> list[str]:
        arg = (f"tiny,num_steps={self.stage_b_steps},eval_every={self.eval_every},"
               f"checkpoint_every={self.eval_every},exit_steps=0")
        cmd = [sys.executable, "-m", "radblur_jax.main",
               f"--config={_config_file('deblur.py')}:{arg}",
               *self._common(self.stage_b_dir(mix, variant, seed), mix, seed),
               f"--config.model.decoder.depth_fusion={'attention' if variant.fusion else 'none'}"]
        if variant.pretrained:
            cmd.append(f"--config.init.checkpoint={self.stage_a_dir(mix, seed)}")
        return cmd

    def settings(self) -> dict:
        """The plan as JSON-able data (embedded in every result and the report)."""
        return {"seeds": list(self.seeds), "stage_a_steps": self.stage_a_steps,
                "stage_b_steps": self.stage_b_steps, "eval_every": self.eval_every,
                "stage_a_config": f"configs/depth_pretrain.py:tiny,num_steps={self.stage_a_steps}",
                "stage_b_config": f"configs/deblur.py:tiny,num_steps={self.stage_b_steps},"
                                  "exit_steps=0",
                "mixes": {m.name: {"about": m.about,
                                   "params": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in m.overrides.items()}}
                          for m in self.mixes},
                "variants": {v.name: v.about for v in self.variants}}


def _config_file(name: str) -> str:
    """The repository's `configs/NAME` (the package is installed in editable mode or run from a
    checkout; the configs live beside it, not inside it)."""
    path = Path(__file__).resolve().parents[2] / "configs" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the ablation runs the repository's config files; "
                                "run it from a checkout")
    return os.fspath(path)
