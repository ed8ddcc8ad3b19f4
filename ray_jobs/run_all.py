"""Ray job: the whole study in one submission — build Diff-Person, pre-train on it, fine-tune + evaluate.

    python -m ray_jobs.run_all --config configs/toy-run-all.yaml --out DIR [--set build.adapter.steps=4 ...]

OUT/diff-person, OUT/pretrain and OUT/finetune hold the three stages' outputs; each stage resumes, so a
re-submission continues where the last one stopped. The fine-tune gets an extra init `diffperson` (the
backbone just pre-trained) beside the inits of its own config.
"""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from diffreid.config import ConfigError, StageConfig, deep_update, read_yaml, set_dotted

STAGES = ("build", "pretrain", "finetune_eval")


class RunAllConfig(StageConfig):
    """Each stage: a config file (relative to this one) or its fields inline (`_BASE_: FILE` allowed)."""

    build: str | dict = Field(..., description="BuildConfig (+ optional ray: section)")
    pretrain: str | dict = Field(..., description="PretrainConfig")
    finetune_eval: str | dict = Field(..., description="FinetuneEvalConfig; `target` may be left out: the build's "
                                                       "first source dataset is then the target (paper §4.2)")


def stage_data(cfg_path: Path, run: RunAllConfig, stage: str, overrides: list[str]) -> dict:
    import copy

    import yaml

    given = getattr(run, stage)
    if isinstance(given, str):
        data = read_yaml(cfg_path.parent / given)
    else:  # inline fields, optionally over a `_BASE_` file
        data = copy.deepcopy(given)
        base = data.pop("_BASE_", None)
        if base:
            merged = read_yaml(cfg_path.parent / base)
            deep_update(merged, data)
            data = merged
    for item in overrides:
        key, sep, raw = item.partition("=")
        prefix, dot, rest = key.partition(".")
        if not sep or not dot or prefix not in STAGES:
            raise ConfigError(f"--set {item!r}: expected <stage>.<field>=value with stage one of {', '.join(STAGES)}")
        if prefix == stage:
            set_dotted(data, rest, yaml.safe_load(raw))
    return data

from ray_jobs._common import job_parser


def main(argv: list[str] | None = None) -> int:
    p = job_parser("run_all", __doc__, "RunAllConfig YAML naming the three stage configs",
                   "outputs/run-all",
                   "OUT/diff-person, OUT/pretrain, OUT/finetune", set_metavar="STAGE.KEY=VALUE",
                   set_help="override a stage's field, e.g. pretrain.epochs=2")
    args = p.parse_args(argv)

    from diffreid.config import format_validation_error
    from diffreid.data import load_dataset
    from diffreid.distributed.build import RayBuildJobConfig, build_diff_person_ray
    from diffreid.distributed.cluster import init_ray
    from diffreid.distributed.finetune import run_finetune_eval_ray
    from diffreid.distributed.train import pretrain_with_ray
    from diffreid.reid.finetune import FinetuneEvalConfig
    from diffreid.reid.pretrain import PretrainConfig
    from pydantic import ValidationError

    path = Path(args.config)
    run = RunAllConfig.load(path)
    out = Path(args.out).resolve()
    data = {stage: stage_data(path, run, stage, args.set) for stage in STAGES}

    def validate(model, stage, extra=None):
        try:
            return model.model_validate({**data[stage], **(extra or {})})
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, f"{path}: {stage}", stage)) from None

    build_cfg = validate(RayBuildJobConfig, "build")
    pretrain_cfg = validate(PretrainConfig, "pretrain")
    init_ray(args.address)

    # 1. Diff-Person
    report = build_diff_person_ray(build_cfg, out / "diff-person")
    print(f"diff-person: {report.parent}")
    # 2. pre-training on it
    pretrain_out = out / "pretrain"
    pretrain_out.mkdir(parents=True, exist_ok=True)
    pretrain_with_ray(pretrain_cfg, load_dataset("market_layout", report.parent, splits=("train",)).train, pretrain_out)
    print(f"backbone:    {pretrain_out / 'backbone.safetensors'}")
    # 3. fine-tune + evaluate, the new backbone beside the config's own inits
    src = build_cfg.sources[0]
    target = data["finetune_eval"].get("target") or {
        "name": src.dataset, "root": src.root or str(report.parent / "sources" / src.name)}
    inits = {**data["finetune_eval"].get("inits", {"random": None}),
             "diffperson": str(pretrain_out / "backbone.safetensors")}
    ft_cfg = validate(FinetuneEvalConfig, "finetune_eval", {"target": target, "inits": inits})
    run_finetune_eval_ray(ft_cfg, out / "finetune")
    print(f"results:     {out / 'finetune' / 'results.md'}\n")
    print((out / "finetune" / "results.md").read_text())
    return 0


if __name__ == "__main__":
    from ray_jobs._common import run_job

    raise SystemExit(run_job(main, "run_all"))
