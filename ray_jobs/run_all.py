"""Ray job: the whole study in one submission — build Diff-Person, pre-train on it, fine-tune + evaluate.

    python -m ray_jobs.run_all --config configs/toy-run-all.yaml --out DIR [--set build.adapter.steps=4 ...]

OUT/diff-person, OUT/pretrain and OUT/finetune hold the three stages' outputs and OUT/report.html shows them
together (results table, sample grids, filter histograms, identity distribution). Each stage resumes, so a
re-submission continues where the last one stopped. The fine-tune gets an extra init `diffperson` (the
backbone just pre-trained) beside the inits of its own config.
"""
from __future__ import annotations

from ray_jobs._common import job_parser


def main(argv: list[str] | None = None) -> int:
    p = job_parser("run_all", __doc__, "RunAllConfig YAML naming the three stage configs",
                   "outputs/run-all",
                   "OUT/diff-person, OUT/pretrain, OUT/finetune, OUT/report.html", set_metavar="STAGE.KEY=VALUE",
                   set_help="override a stage's field, e.g. pretrain.epochs=2")
    args = p.parse_args(argv)

    from diffreid.distributed.run_all import run_all

    run_all(args.config, args.out, args.set, args.address)
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "run_all"))
