"""Training entry point.

    python -m radblur_jax.main --config configs/deblur.py:tiny --workdir /tmp/radblur_tiny
    python -m radblur_jax.main --config configs/depth_pretrain.py:s --workdir DIR \
        --config.optimizer.lr=1e-5 --config.train.batch_size=32

`config.stage` picks the job: "depth" (stage A), "deblur" (stage B), "eval" (evaluation of a
trained workdir). Any config field can be overridden with `--config.<path>=<value>`, the model
too (`--config.model.decoder.fft=False`). Running the same command again resumes from the
workdir's latest checkpoint. A bad flag, config, data set or workdir is one line on stderr and
exit code 2, before anything is written.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and images.")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                    "(else found from the TPU/SLURM environment).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.DEFINE_string("compilation_cache",
                    os.path.join(os.path.expanduser("~"), ".cache", "radblur_jax", "xla"),
                    "Persistent XLA compilation cache ('' = off; $JAX_COMPILATION_CACHE_DIR "
                    "wins): a rerun with the same model, shapes and mesh loads its compiled "
                    "steps instead of compiling them again.")
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/deblur.py:tiny.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing with one-line errors (exit 2) for bad config files and overrides."""
    try:
        rest = FLAGS(argv)
        if FLAGS.config is not None:
            _ = FLAGS.config.stage  # config_flags defers a file that failed to load
        return rest
    except OSError as e:
        msg = f"--config: {str(e).strip().splitlines()[-1].strip()}"
    except flags.Error as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        head = lines[0].split(": Error whilst parsing")[0] if lines else ""
        msg = f"{head}: {lines[-1]}" if len(lines) > 1 else (lines[0] if lines else repr(e))
    except (AttributeError, KeyError) as e:  # an override naming no config field
        msg = f"--config override: no such field {e}"
    print(f"FATAL Flags parsing error: {msg}", file=sys.stderr)
    sys.exit(2)


def enable_compilation_cache(path: str) -> None:
    """Points jax's persistent compilation cache at `path` unless one is configured already."""
    import jax
    if path and not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))


def fail(msg: str) -> None:
    """One line on stderr, exit 2: a bad flag or config, before anything is written."""
    print(f"FATAL {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def check_workdir(workdir: str) -> None:
    """A directory, or a path where one can be made: its nearest existing ancestor is one."""
    path = os.path.abspath(os.path.expanduser(workdir))
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        fail(f"--workdir={workdir}: {path} exists and is not a directory")


def _evaluate(config, workdir: str) -> None:
    from radblur_jax.eval.runner import evaluate
    evaluate(config, workdir)


# Folder layouts without train/test splits: one root is one set of images.
UNSPLIT_DATASETS = ("paired_folder", "depth_folder")


def _check_training(config) -> None:
    """The training config, its data sets and its mesh, checked before anything is written."""
    import jax

    from radblur_jax.data.image_io import DataError
    from radblur_jax.data.sources import make_source, resolve_spec
    from radblur_jax.train import sharding
    from radblur_jax.train.config_base import check_config
    from radblur_jax.train.input import local_batch_size
    from radblur_jax.train.tasks import TASKS
    try:
        check_config(config)
    except (ValueError, KeyError, TypeError) as e:
        fail(f"--{e}" if str(e).startswith("config.") else f"--config: {e}")
    fields = TASKS[config.stage].fields
    for key in ("data", "eval_data"):
        try:
            source = make_source(resolve_spec(config[key]))
            example = source[0] if len(source) else None
        except (ValueError, KeyError, TypeError, DataError, FileNotFoundError) as e:
            fail(f"--config.{key}: {e}")
        if example is None:
            fail(f"--config.{key}: {config[key].name} at {config[key].root or '(built-in)'} "
                 f"has no examples")
        missing = [f for f in fields if f not in example]
        if missing:
            fail(f"--config.{key}.name={config[key].name}: its examples have "
                 f"{sorted(example)}; stage {config.stage!r} trains on {list(fields)}")
        if key == "data":
            _check_crop(config, example[fields[0]].shape)
    data, val = config.data, config.eval_data
    if data.name in UNSPLIT_DATASETS and (val.name, val.root) == (data.name, data.root):
        logging.warning("config.data and config.eval_data read the same %s folder %s (a layout "
                        "without splits: `split` is not used): validation scores training "
                        "images", data.name, data.root)
    try:
        mesh = sharding.make_mesh(config.mesh)
        sharding.check_batch(config.train.batch_size, mesh, config.mesh.batch_axes)
        local_batch_size(config.train.batch_size, jax.process_count())
    except ValueError as e:
        fail(f"--{e}")


def _check_crop(config, shape: tuple[int, ...]) -> None:
    """The training crop fits the first training image (the pipeline checks every image)."""
    crop, (h, w) = int(config.input.crop_size), shape[:2]
    if crop > min(h, w):
        fail(f"--config.input.crop_size={crop}: larger than the training images ({h}x{w} "
             f"for the first of {config.data.name}); give a crop that fits")


def _train(config, workdir: str) -> None:
    from radblur_jax.train import loop
    from radblur_jax.train.optimizer import FreezePatternError
    logging.info("stage %s, model %s, workdir %s", config.stage, config.model.name, workdir)
    try:
        loop.train_and_evaluate(config, workdir)
    except FreezePatternError as e:  # raised building the optimiser, before the loop writes
        fail(f"--config.{e}")


# config.stage -> (check before anything is written, run)
JOBS = {"eval": (lambda config: None, _evaluate),
        "deblur": (_check_training, _train),
        "depth": (_check_training, _train)}


def main(argv):
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    if config.stage not in JOBS:
        fail(f"--config.stage={config.stage!r}: expected one of {sorted(JOBS)}")
    check_workdir(FLAGS.workdir)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    enable_compilation_cache(FLAGS.compilation_cache)
    # Before the config check: checking builds the task, and anything that asks JAX for its
    # backend must come after jax.distributed.initialize.
    from radblur_jax.train.distributed import maybe_initialize
    maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    check, run = JOBS[config.stage]
    check(config)
    run(config, FLAGS.workdir)


if __name__ == "__main__":
    from radblur_jax.host_memory import reexec_with_huge_pages
    reexec_with_huge_pages()
    app.run(main, flags_parser=parse_flags)
