"""Does depth help? Trains the four RADBlur variants on two synthetic mixes and writes the report.

    python tools/ablation.py --out workdir/ablation                 # train what is missing, report
    nohup python tools/ablation.py --out workdir/ablation > ablation.log 2>&1 &   # in background
    python tools/ablation.py --out workdir/ablation --report-only   # rebuild the report only

Variants (radblur_jax/ablation/plan.py): (a) random encoder, no depth fusion; (b) random encoder,
fusion; (c) encoder + depth branch from stage A, fusion; (d) stage A, no fusion. Each variant
trains `tiny` for the same steps on the same data with each seed; stage A runs once per mix and
seed. Resumable: a rerun skips finished runs and resumes a killed one from its checkpoint. The
report (`--report`, default docs/results.md, and its learning-curve PNG beside it) is built only
from the runs' saved results, so rebuilding it gives the same bytes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from radblur_jax.ablation import plan as plan_lib
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from radblur_jax.ablation import plan as plan_lib
from radblur_jax.cli_args import int_at_least


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the data mixes and the runs")
    parser.add_argument("--report", default="docs/results.md",
                        help="report to write (the curves PNG goes beside it)")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild the report from the finished runs; train nothing")
    parser.add_argument("--seeds", type=_seeds, default=plan_lib.Plan.seeds)
    parser.add_argument("--stage-a-steps", type=int_at_least(1),
                        default=plan_lib.Plan.stage_a_steps)
    parser.add_argument("--stage-b-steps", type=int_at_least(1),
                        default=plan_lib.Plan.stage_b_steps)
    parser.add_argument("--eval-every", type=int_at_least(1), default=plan_lib.Plan.eval_every)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        print(f"--out={args.out}: exists and is not a directory", file=sys.stderr)
        return 2
    plan = plan_lib.Plan(out=out, seeds=args.seeds, stage_a_steps=args.stage_a_steps,
                         stage_b_steps=args.stage_b_steps, eval_every=args.eval_every)
    from radblur_jax.ablation import report, runner
    try:
        report.check_plan_file(plan)
    except ValueError as e:
        print(f"--out={args.out}: {e}", file=sys.stderr)
        return 2
    if not args.report_only:
        import jax
        jax.config.update("jax_compilation_cache_dir", str(out / "xla_cache"))
        runner.prepare_data(plan)
        runner.mix_info(plan)
        runner.run_all(plan)
        runner.complete_results(plan)
    path = report.write_report(plan, args.report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
