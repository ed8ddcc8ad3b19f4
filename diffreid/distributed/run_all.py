"""The whole study as one Ray driver: build Diff-Person, pre-train on it (Ray Train), fine-tune + evaluate
(Ray tasks), and write OUT/report.html. ``ray_jobs.run_all`` and ``diffreid demo`` are thin entrypoints over
:func:`run_all`."""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import Field

from diffreid.config import ConfigError, StageConfig
from diffreid.distributed.build import RayBuildJobConfig
from diffreid.reid.finetune import FinetuneEvalTemplate
from diffreid.reid.pretrain import PretrainConfig


class RunAllConfig(StageConfig):
    """Each stage: a config file (relative to this one) or its fields inline (`_BASE_: FILE` allowed); all three
    are validated before the first stage starts."""

    build: RayBuildJobConfig = Field(..., description="BuildConfig (+ optional ray: section)")
    pretrain: PretrainConfig = Field(..., description="PretrainConfig")
    finetune_eval: FinetuneEvalTemplate = Field(..., description="FinetuneEvalConfig; `target` may be left out: "
                                                "the build's first source dataset is then the target (paper §4.2)")


def run_all(config: str | Path | RunAllConfig, out_dir: str | Path, overrides: list[str] | tuple = (),
            address: str | None = None) -> Path:
    """Run the three stages of a RunAllConfig (or its YAML path) into ``out_dir``; returns OUT/report.html.
    ``overrides``: STAGE.FIELD=VALUE strings; ``address``: a Ray cluster (default: RAY_ADDRESS, else a new
    local loopback cluster)."""
    from diffreid.data.sources import source_root
    from diffreid.data import load_dataset
    from diffreid.distributed.build import build_diff_person_ray
    from diffreid.distributed.cluster import init_ray
    from diffreid.distributed.finetune import run_finetune_eval_ray
    from diffreid.distributed.train import pretrain_with_ray

    if isinstance(config, RunAllConfig) and overrides:
        raise ConfigError(f"overrides {list(overrides)[:3]} given with a RunAllConfig object: they apply to a YAML "
                          "file; change the object's fields (model_copy) instead")
    run = config if isinstance(config, RunAllConfig) else RunAllConfig.load(config, overrides=list(overrides))
    out = Path(out_dir).resolve()
    build_cfg, pretrain_cfg = run.build, run.pretrain
    init_ray(address)
    timings: dict[str, float] = {}

    # 1. Diff-Person
    stage("1/3 Diff-Person: LPE captions, reference set, identity adapters, sampling, Re-ID CTF filter")
    t0 = time.time()
    report = build_diff_person_ray(build_cfg, out / "diff-person")
    timings["Diff-Person build"] = time.time() - t0
    print(f"diff-person: {report.parent}")
    # 2. pre-training on it
    stage("2/3 backbone pre-training on Diff-Person (Ray Train)")
    t0 = time.time()
    pretrain_out = out / "pretrain"
    pretrain_out.mkdir(parents=True, exist_ok=True)
    records = load_dataset("market_layout", report.parent, splits=("train",)).train
    if len(records) < pretrain_cfg.batch_size:
        raise ConfigError(f"{report.parent}: the filter kept {len(records)} images, fewer than pretrain.batch_size "
                          f"({pretrain_cfg.batch_size}); generate more (build.sampler.num_images), lower "
                          "build.filter.threshold, or lower pretrain.batch_size")
    pretrain_with_ray(pretrain_cfg, records, pretrain_out)
    timings["pre-training"] = time.time() - t0
    print(f"backbone:    {pretrain_out / 'backbone.safetensors'}")
    # 3. fine-tune + evaluate, the new backbone beside the config's own inits
    src = build_cfg.sources[0]
    target = run.finetune_eval.target or {"name": src.dataset, "root": str(source_root(src, report.parent))}
    ft_cfg = run.finetune_eval.complete(target=target, inits={
        **run.finetune_eval.inits, "diffperson": str(pretrain_out / "backbone.safetensors")})
    stage("3/3 fine-tune + evaluation on the target (Ray tasks)")
    t0 = time.time()
    df = run_finetune_eval_ray(ft_cfg, out / "finetune")
    timings["fine-tune + evaluation"] = time.time() - t0
    print(f"results:     {out / 'finetune' / 'results.md'}\n")
    print((out / "finetune" / "results.md").read_text())
    page = write_run_report(out, report.parent, df, timings, ft_cfg, pretrain_images=len(records))
    print(f"report:      {page}")
    return page


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def write_run_report(out: Path, diff_person: Path, df, timings: dict[str, float], ft_cfg,
                     pretrain_images: int) -> Path:
    """OUT/report.html: the build's identity fidelity (when measured) and the results table first, then the
    Diff-Person report's sections."""
    from diffreid.diffperson.report import write_report
    from diffreid.reid.finetune import summarise

    summary = summarise(df)
    table = [{"setting": r["setting"], "p%": r["percent"], "init": r["init"],
              "mAP %": f"{100 * r['mAP']:.1f}" + (f" ± {100 * r['mAP_std']:.1f}" if r["seeds"] > 1 else ""),
              "Rank-1 %": f"{100 * r['Rank-1']:.1f}" + (f" ± {100 * r['Rank-1_std']:.1f}" if r["seeds"] > 1 else ""),
              "seeds": int(r["seeds"])} for _, r in summary.iterrows()]
    times = [{"stage": k, "minutes": f"{v / 60:.1f}"} for k, v in timings.items()]
    notes = [f"Target: {ft_cfg.target.name} at {ft_cfg.target.root}. Inits: random = random initialisation; "
             "diffperson = the backbone pre-trained on this run's Diff-Person."]
    gains = [r["mAP"] for _, r in summary.iterrows() if r["init"] == "diffperson"]
    losses_to_random = any(g <= r["mAP"] for g in gains for _, r in summary.iterrows() if r["init"] == "random")
    if pretrain_images < 10_000 and losses_to_random:
        notes.append(f"The pre-training set has {pretrain_images} images; the paper's Diff-Person has 777K of 5,183 "
                     "identities. With a few hundred images, pre-training on generated images alone may not beat "
                     "random init: more images per identity (`--set build.sampler.num_images=48`) and a filter "
                     "threshold that keeps most of them help (the README's demo section has the runs measured).")
    curves = out / "finetune" / "results.png"
    return write_report(diff_person, out=out / "report.html", title="diffreid run: Diff-Person → pre-training → "
                        "fine-tune", headline=headline(summary),
                        lead_tables={"Results (fine-tune on the target)": table, "Stage times": times},
                        lead_images={"mAP by setting": curves} if curves.is_file() else None, notes=notes)


def headline(summary, init: str = "diffperson", baseline: str = "random") -> str:
    """One sentence: did pre-training on the generated data help, by how much, per setting (mAP, ± std over
    fine-tune seeds)."""
    parts = []
    for (setting, percent), part in summary.groupby(["setting", "percent"], sort=False):
        rows = {r["init"]: r for _, r in part.iterrows()}
        if init not in rows or baseline not in rows:
            continue
        new, old = rows[init], rows[baseline]
        delta = 100 * (new["mAP"] - old["mAP"])
        spread = (lambda r: f" ± {100 * r['mAP_std']:.1f}" if r["seeds"] > 1 else "")
        name = setting if setting in ("supervised", "cross_domain") else f"{setting.capitalize()} {percent}%"
        parts.append(f"{name}: mAP {100 * new['mAP']:.1f}{spread(new)} vs {100 * old['mAP']:.1f}{spread(old)} "
                     f"({delta:+.1f}, {int(new['seeds'])} fine-tune seed{'s' * (new['seeds'] > 1)})")
    if not parts:
        return f"No setting compares {init} with {baseline} initialisation."
    gains = [float(p.split("(")[1].split(",")[0]) for p in parts]
    verdict = ("Pre-training on the generated images helped" if min(gains) > 0 else
               "Pre-training on the generated images did not help" if max(gains) <= 0 else
               "Pre-training on the generated images helped in some settings")
    return f"{verdict}: " + "; ".join(parts) + f" ({init} vs {baseline} initialisation)."

