"""The miniature reproduction of the paper's claim (Tables 2-3) in the toy world.

Source S: toy-world identities with real images. Target T: disjoint identities seen by other cameras.
Backbones: (a) random init, (b) pre-trained on S's real images, (c) pre-trained on S real + Diff-Person-toy
generated from S, plus ablations of (c): the generated part built without the filter, without the identity
token, with lambda = 0, or with another adapter mode. Every backbone is fine-tuned on T in the Fs setting and
the supervised setting over several seeds. The toy world knows each identity's true attributes, so the
filter's decisions are also checked against them with the toy attribute predictor.

Every step writes into OUT and is skipped when its output exists, so a re-run resumes.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from pydantic import Field, model_validator

from diffreid.build import BuildTemplate
from diffreid.config import RESOLVED_CONFIG, StageConfig, apply_overrides, deep_update
from diffreid.data.toyworld import ToyWorldConfig
from diffreid.io import atomic_write_json, atomic_write_text
from diffreid.reid.finetune import FinetuneEvalTemplate
from diffreid.reid.pretrain import PretrainConfig
from diffreid.vi.config import VIExpandConfig


def _domain_world(seed: int, pid_offset: int, cam_offset: int) -> ToyWorldConfig:
    return ToyWorldConfig(ids_train=32, ids_test=32, cams=4, height=64, width=32, seed=seed, pid_offset=pid_offset,
                          cam_offset=cam_offset)


class DomainSettings(StageConfig):
    """The paper's Tables 4-6 in the toy world: worlds with their own people and camera looks serve as domains.
    unsupervised and uda adapt to the study's target T; dg trains on ``dg_sources`` merged and tests on
    ``dg_targets``."""

    settings: list[Literal["unsupervised", "uda", "dg"]] = Field(
        ["unsupervised", "uda", "dg"], min_length=1, description="Tables 4 (unsupervised), 5 (uda), 6 (dg)")
    inits: list[str] = Field(["random", "real S + Diff-Person"], min_length=1,
                             description="backbones compared: 'random' or names of the study's backbones")
    uda_source: ToyWorldConfig = Field(default_factory=lambda: _domain_world(2, 3000, 20),
                                       description="uda: the labelled source (other people, other cameras than T)")
    dg_sources: list[ToyWorldConfig] = Field(
        default_factory=lambda: [_domain_world(3, 4000, 30), _domain_world(4, 5000, 40)], min_length=1,
        description="dg: labelled sources merged (META/MetaBIN merge four datasets)")
    dg_targets: list[ToyWorldConfig] = Field(
        default_factory=lambda: [_domain_world(5, 6000, 50), _domain_world(6, 7000, 60)], min_length=1,
        description="dg: unseen worlds, each tested on its own query/gallery")
    finetune: dict = Field(default_factory=dict, description="overrides of the study's `finetune` for these runs "
                           "(e.g. seeds, cluster epochs)")


def _source_world() -> ToyWorldConfig:
    return ToyWorldConfig(ids_train=48, ids_test=1, cams=6, height=64, width=32, seed=0)


def _target_world() -> ToyWorldConfig:
    return ToyWorldConfig(ids_train=48, ids_test=48, cams=6, height=64, width=32, seed=0, pid_offset=1000,
                          cam_offset=6)


class StudyConfig(StageConfig):
    source: ToyWorldConfig = Field(default_factory=_source_world, description="S: its train ids are generated from")
    target: ToyWorldConfig = Field(default_factory=_target_world, description="T: other people, other cameras")
    build: BuildTemplate = Field(default_factory=BuildTemplate, description="the main Diff-Person's BuildConfig "
                                 "(its `sources` are set to S)")
    variants: dict[str, list[str]] = Field(default_factory=dict, description="ablation name -> build overrides "
                                           "(dotted KEY=VALUE) applied over `build`")
    no_filter: bool = Field(True, description="also pre-train on the main build's kept + dropped images")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="shared by every backbone")
    finetune: FinetuneEvalTemplate = Field(default_factory=FinetuneEvalTemplate,
                                           description="for (a)-(c) (target and inits are set here)")
    ablation_finetune: dict = Field(default_factory=dict, description="overrides of `finetune` for ablation "
                                    "backbones (e.g. fewer settings)")
    filter_thresholds: list[float] = Field(default_factory=list, description="also pre-train on the main build's "
                                           "images scoring >= each threshold (kept or dropped): the filter's "
                                           "keep-rate vs purity trade-off without re-generating")
    pretrain_seeds: list[int] = Field([0], min_length=1, description="pre-training seeds of `seeded_backbones`; "
                                      "the first is every backbone's, the others are fine-tuned with "
                                      "`ablation_finetune` (one pre-training run is one sample of the claim)")
    seeded_backbones: list[str] = Field(["real S", "real S + Diff-Person"], description="backbones pre-trained "
                                        "once per seed: (b) and (c) by default; any backbone name of the tables")
    domains: DomainSettings | None = Field(None, description="also the unsupervised, uda and dg settings "
                                           "(Tables 4-6) with toy worlds as domains; None = Tables 2-3 only")
    vi: VIExpandConfig | None = Field(None, description="also run DiVE (a VIExpandConfig, e.g. toy-vi.yaml) and "
                                      "its VI-ReID gain table; None = Tables 2-3 only")
    vi_seeds: list[int] = Field([0, 1, 2], min_length=1, description="seeds of the VI-ReID gain table")

    def backbone_names(self) -> list[str]:
        """The pre-trained backbones, in table order."""
        names = ["real S", "real S + Diff-Person"] + ["real S + Diff-Person, no filter"] * self.no_filter
        names += [f"real S + Diff-Person, threshold {t:g}" for t in self.filter_thresholds]
        return names + [f"real S + Diff-Person, {name}" for name in self.variants]

    def ablation_finetune_config(self) -> FinetuneEvalTemplate:
        """`finetune` with `ablation_finetune` over it."""
        data = self.finetune.model_dump(mode="json")
        deep_update(data, copy.deepcopy(self.ablation_finetune))
        return FinetuneEvalTemplate.validated(data, "ablation_finetune")

    @model_validator(mode="after")
    def _check(self):
        unknown = sorted(set(self.seeded_backbones) - set(self.backbone_names()))
        if unknown:
            raise ValueError(f"seeded_backbones: {unknown} are not backbones of this study; "
                             f"choose from {self.backbone_names()}")
        for name, overrides in self.variants.items():  # every variant's build validates before any work
            data = apply_overrides(self.build.model_dump(mode="json"), overrides, f"variants.{name}")
            BuildTemplate.validated(data, f"variants.{name}")
        self.ablation_finetune_config()
        if self.domains is not None:
            unknown = sorted(set(self.domains.inits) - {"random", *self.backbone_names()})
            if unknown:
                raise ValueError(f"domains.inits: {unknown} are not backbones of this study; choose from "
                                 f"{['random', *self.backbone_names()]}")
            self.domain_finetune_config("/world")
        return self

    def domain_finetune_config(self, world_root: str, backbones: dict | None = None):
        """The fine-tune config of the domain settings, worlds read from ``world_root/<name>``."""
        d = self.domains
        data = self.finetune.model_dump(mode="json")
        deep_update(data, copy.deepcopy(d.finetune))

        def ref(name):
            return {"name": "market_layout", "root": f"{world_root}/{name}"}

        inits = {name: None if name == "random" else (backbones or {}).get(name, f"{name}.safetensors")
                 for name in d.inits}
        names = list(self.domain_worlds())
        data.update(settings=list(d.settings), target=ref("T"), uda_source=ref("U"),
                    dg_sources=[ref(n) for n in names if n.startswith("DG-S")],
                    dg_targets=[ref(n) for n in names if n.startswith("DG-T")], inits=inits)
        return FinetuneEvalTemplate.validated(data, "domains.finetune").complete()

    def domain_worlds(self) -> dict[str, ToyWorldConfig]:
        d = self.domains
        return {"U": d.uda_source, **{f"DG-S{i + 1}": w for i, w in enumerate(d.dg_sources)},
                **{f"DG-T{i + 1}": w for i, w in enumerate(d.dg_targets)}}


def _records_with_source_pids(diff_person: Path, folders=("bounding_box_train",), min_score: float | None = None):
    """Diff-Person images labelled with their source pid, so they share labels with the real S images;
    with ``min_score``, only those whose filter score (manifest ``score_reid_ctf``) reaches it."""
    from dataclasses import replace

    from diffreid.data.readers.market import read_market_folder
    from diffreid.diffperson.writer import PidMapper

    to_source = {pid: int(key[1]) for key, pid in PidMapper(diff_person / "pid_map.json").items()}
    records = []
    for folder in folders:
        if (diff_person / folder).is_dir():
            records += [replace(r, pid=to_source[r.pid]) for r in
                        read_market_folder(str(diff_person / folder), keep_distractors=False)]
    if min_score is not None:
        import pandas as pd

        manifest = pd.read_parquet(diff_person / "manifest.parquet", columns=["file", "score_reid_ctf"])
        score = {str((diff_person / f).resolve()): v for f, v in zip(manifest["file"], manifest["score_reid_ctf"]) if f}
        records = [r for r in records if score[str(Path(r.path).resolve())] >= min_score]
    return records


def filter_agreement(diff_person: Path, world: Path, captioner) -> dict:
    """For generated images kept vs dropped by the filter: how often the toy attribute predictor reads the
    identity's true clothing (upper/lower colour and type) from them."""
    import pandas as pd

    from diffreid.data.toyworld import read_attributes
    from diffreid.diffperson.fidelity import ALL_FOUR, attribute_hits, predict_attributes

    truth = read_attributes(world).set_index("pid")
    manifest = pd.read_parquet(diff_person / "manifest.parquet")
    manifest = manifest[(manifest["origin"] == "generated") & (manifest["file"] != "")]
    out = {}
    for kept, part in manifest.groupby("kept"):
        preds = predict_attributes(captioner, [diff_person / p for p in part["file"]])
        hits = attribute_hits(preds, [truth.loc[int(pid)] for pid in part["source_pid"]])
        out["kept" if kept else "dropped"] = {"images": int(len(part)), **{k: float(hits[k].mean()) for k in ALL_FOUR},
                                              "all four": float(hits["all_four"].mean())}
    return out


def run_study(cfg: StudyConfig, out_dir, finetune_runner: Callable | None = None, progress: bool = True) -> dict:
    """Run (or resume) the study into ``out_dir``; returns the paths of its tables. ``finetune_runner``
    (cfg, out) -> DataFrame defaults to the in-process one (``ray_jobs.reproduce`` passes the Ray one)."""
    import pandas as pd

    from diffreid.build import build_diff_person
    from diffreid.data import load_dataset
    from diffreid.data.toyworld import render_world
    from diffreid.reid.finetune import run_finetune_eval, summarise, to_markdown
    from diffreid.reid.pretrain import pretrain_in_process

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / RESOLVED_CONFIG)
    finetune_runner = finetune_runner or (lambda c, o: run_finetune_eval(c, o, progress=progress))
    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").is_file() else {}

    def timed(name, fn):
        t0 = time.time()
        result = fn()
        timings.setdefault(name, round(time.time() - t0, 1))
        atomic_write_json(out / "timings.json", timings)
        return result

    # 1. worlds
    source = timed("render S", lambda: render_world(cfg.source, out / "worlds" / "S", progress=progress))
    target = timed("render T", lambda: render_world(cfg.target, out / "worlds" / "T", progress=progress))
    s_real = load_dataset("market_layout", source, splits=("train",)).train

    # 2. Diff-Person builds: the main one and each ablation
    builds = {}
    for name, overrides in {"full": [], **cfg.variants}.items():
        build_cfg = cfg.build.complete(overrides, f"variants.{name}",
                                       sources=[{"name": "S", "dataset": "market_layout", "root": str(source)}])
        folder = out / "builds" / name
        if not (folder / "report.html").is_file():
            timed(f"build {name}", lambda: build_diff_person(build_cfg, folder, progress=progress))
        builds[name] = folder

    # 3. backbones
    pretrain_cfg = cfg.pretrain
    both = ("bounding_box_train", "dropped")
    generated = [_records_with_source_pids(builds["full"])]  # in cfg.backbone_names() order, after "real S"
    if cfg.no_filter:
        generated.append(_records_with_source_pids(builds["full"], both))
    generated += [_records_with_source_pids(builds["full"], both, min_score=t) for t in cfg.filter_thresholds]
    generated += [_records_with_source_pids(builds[name]) for name in cfg.variants]
    train_sets = dict(zip(cfg.backbone_names(), [s_real] + [s_real + g for g in generated], strict=True))
    main = ["real S", "real S + Diff-Person"]
    jobs = [(name, records, cfg.pretrain_seeds[0]) for name, records in train_sets.items()]
    jobs += [(name, train_sets[name], seed) for seed in cfg.pretrain_seeds[1:] for name in cfg.seeded_backbones]
    backbones, seeded, sizes = {}, {}, {}
    for name, records, seed in jobs:
        folder = out / "pretrain" / _slug(name)
        label = name
        if seed != cfg.pretrain_seeds[0]:
            folder, label = folder.with_name(f"{folder.name}_seed{seed}"), f"{name} · pretrain seed {seed}"
        if not (folder / "backbone.safetensors").is_file():
            seed_cfg = pretrain_cfg.model_copy(update={"runtime": pretrain_cfg.runtime.model_copy(update={"seed": seed})})
            timed(f"pretrain {label}", lambda: pretrain_in_process(seed_cfg, records, folder, progress=progress))
        (backbones if label == name else seeded)[label] = str(folder / "backbone.safetensors")
        sizes[name] = {"images": len(records), "identities": len({r.pid for r in records})}
    atomic_write_json(out / "pretrain_sets.json", sizes)

    def finetune(name, ft_cfg):
        """Fine-tune runs of one table; reused when the same config already finished in OUT."""
        folder = out / "finetune" / name
        stamp, runs = folder / "finetune_config.json", folder / "results_runs.csv"
        want = ft_cfg.model_dump(mode="json")
        if runs.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == want:
            return pd.read_csv(runs)
        df = timed(f"fine-tune {name}", lambda: finetune_runner(ft_cfg, folder))
        atomic_write_json(stamp, want)
        return df

    # 4. fine-tune on T
    target_ref = {"name": "market_layout", "root": str(target)}
    main_cfg = cfg.finetune.complete(target=target_ref, inits={"random": None, **{k: backbones[k] for k in main}})
    frames = [finetune("main", main_cfg)]
    ablation = cfg.ablation_finetune_config()

    def finetune_each(table, inits):
        """One cached fine-tune per backbone, so adding a backbone to the table runs only that one."""
        return pd.concat([finetune(f"{table}/{_slug(name)}", ablation.complete(target=target_ref, inits={name: path}))
                          for name, path in inits.items()], ignore_index=True)

    ablations = {k: v for k, v in backbones.items() if k not in main}
    if ablations:
        frames.append(with_main_runs(frames[0], finetune_each("ablations", ablations), ["real S + Diff-Person"]))
    seeds_frame = None
    if seeded:
        extra = finetune_each("pretrain_seeds", seeded)
        parts = extra["init"].str.split(" · pretrain seed ")
        extra = extra.assign(init=parts.str[0], pretrain_seed=parts.str[1].astype(int))
        every = pd.concat(frames, ignore_index=True).drop_duplicates(["setting", "percent", "init", "seed"])
        seeds_frame = with_main_runs(every, extra, cfg.seeded_backbones)
        seeds_frame["pretrain_seed"] = seeds_frame["pretrain_seed"].fillna(cfg.pretrain_seeds[0]).astype(int)

    # 4b. the other settings (Tables 4-6), worlds as domains
    domains_frame = None
    if cfg.domains is not None:
        for name, world in cfg.domain_worlds().items():
            timed(f"render {name}", lambda: render_world(world, out / "worlds" / name, progress=progress))
        domain_cfg = cfg.domain_finetune_config(str(out / "worlds"), backbones)
        domains_frame = finetune("domains", domain_cfg)

    # 5. filter agreement with ground truth
    agreement = {}
    try:
        from diffreid.generation.toy_captioner import ToyCaptioner
        from diffreid.models.assets import resolve_model_path

        captioner = ToyCaptioner(resolve_model_path("diffreid:toy-captioner"))
        agreement = {name: filter_agreement(folder, source, captioner) for name, folder in builds.items()}
    except FileNotFoundError as err:
        print(f"filter agreement skipped: {err}")
    atomic_write_json(out / "filter_agreement.json", agreement)

    # 6. DiVE: the VI expansion and the VI-ReID model trained with and without it
    vi = None
    if cfg.vi is not None:
        from diffreid.vi import expand_vi
        from diffreid.vi.gain import gain_table, vi_gain

        summary = timed("vi-expand", lambda: expand_vi(cfg.vi, out / "vi", progress=progress).summary)
        vi = {"summary": summary, "table": gain_table(timed("vi gain", lambda: vi_gain(out / "vi", cfg.vi_seeds)))}

    tables = {"main": to_markdown(summarise(frames[0]))}
    if len(frames) > 1:
        tables["ablations"] = to_markdown(summarise(frames[1]))
    if seeds_frame is not None:
        tables["pretrain_seeds"] = to_markdown(summarise(seeds_frame))
        tables["seed_gaps"] = seed_gap_table(seeds_frame, cfg.seeded_backbones[0], cfg.seeded_backbones[1:])
    if domains_frame is not None:
        tables["domains"] = to_markdown(summarise(domains_frame))
    text = format_study(tables, agreement, sizes, timings, vi)
    atomic_write_text(out / "RESULTS.md", text)
    print(text)
    return {"results": out / "RESULTS.md", "dataframes": [str(out / "finetune" / k) for k in ("main", "ablations")]}


def seed_gap_table(frame, reference: str, others: list[str]) -> str:
    """Each backbone against ``reference`` with one sample per pre-training seed (its mean mAP over the
    fine-tune seeds): gap of the means, and whether it exceeds the pooled std sqrt((s_ref² + s²)/2)."""
    per_seed = frame.groupby(["setting", "percent", "init", "pretrain_seed"], sort=False)["mAP"].mean() * 100
    lines = [f"| setting | p% | backbone | {reference} mAP | backbone mAP | gap | pooled std | gap > pooled std |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for (setting, percent), part in per_seed.groupby(level=["setting", "percent"], sort=False):
        by_init = {init: v.to_numpy() for init, v in part.groupby(level="init", sort=False)}
        if reference not in by_init:
            continue
        ref = by_init[reference]
        for name in others:
            if name not in by_init:
                continue
            x = by_init[name]
            pooled = float(np.sqrt((ref.std(ddof=1) ** 2 + x.std(ddof=1) ** 2) / 2)) if min(len(ref), len(x)) > 1 \
                else float("nan")
            gap = x.mean() - ref.mean()
            lines.append(f"| {setting} | {percent} | {name} | {ref.mean():.1f} ±{ref.std(ddof=1):.1f} (n={len(ref)}) | "
                         f"{x.mean():.1f} ±{x.std(ddof=1):.1f} (n={len(x)}) | {gap:+.1f} | {pooled:.1f} | "
                         f"{'yes' if gap > pooled else 'no'} |")
    return "\n".join(lines) + "\n"


def with_main_runs(main, extra, inits):
    """``extra``'s fine-tune runs with ``main``'s runs of ``inits`` in the same settings put first (the same
    backbone, config and seeds: run once, shown in both tables)."""
    import pandas as pd

    settings = set(zip(extra["setting"], extra["percent"]))
    in_settings = pd.Series([k in settings for k in zip(main["setting"], main["percent"])], index=main.index)
    first = main[main["init"].isin(inits) & in_settings]
    return pd.concat([first, extra], ignore_index=True)


def _slug(name: str) -> str:
    return name.replace(" · ", "_").replace(" ", "_").replace(",", "").replace("+", "plus")


def format_vi(vi: dict) -> list[str]:
    s = vi["summary"]
    lines = ["## DiVE: a VI-ReID model with and without the expanded identities", "",
             f"{s['expanded_ids']}/{s['rgb_ids']} RGB identities expanded, {s['generated_kept']}/{s['generated']} "
             "generated IR images kept."]
    if "sysu_all" in s["scorer"]:
        m = s["scorer"]["sysu_all"]
        lines[-1] += f" Scorer SYSU-all mAP {m['mAP']:.3f}, Rank-1 {m['Rank-1']:.3f}."
    if "fidelity" in s:
        f = s["fidelity"]
        lines[-1] += (f" Fidelity (independent reader, Rank-1 vs the identities' visible images, chance "
                      f"{f['chance']:.2f}): all {f['rank1_all']:.2f}, kept {f['rank1_kept']:.2f}, "
                      f"dropped {f['rank1_dropped']:.2f}.")
    return lines + ["", "Cells: mean ± std over seeds.", "", vi["table"], ""]


def format_study(tables: dict[str, str], agreement: dict, sizes: dict, timings: dict, vi: dict | None = None) -> str:
    lines = ["# Miniature reproduction (toy world)", "",
             "Fine-tune on T from each backbone; cells: mAP ± std over seeds / Rank-1 (%).", "",
             "## (a) random vs (b) real S vs (c) real S + Diff-Person", "", tables["main"]]
    if "ablations" in tables:
        lines += ["## Ablations of (c)", "", tables["ablations"]]
    if "pretrain_seeds" in tables:
        lines += ["## Over pre-training seeds", "",
                  "Cells: mAP ± std over every pre-training seed × fine-tune seed.", "", tables["pretrain_seeds"]]
        if "seed_gaps" in tables:
            lines += ["One sample per pre-training seed (mean over the fine-tune seeds); ± is the std over "
                      "pre-training seeds.", "", tables["seed_gaps"]]
    if "domains" in tables:
        lines += ["## Unsupervised, domain adaptation, domain generalisation (Tables 4-6)", "",
                  "unsupervised: cluster contrast on T's unlabelled train split; uda: supervised on world U, then "
                  "cluster contrast on T; dg: supervised on the DG-S worlds merged, tested on each DG-T world "
                  "(dg:market_layout[i] = DG-T(i+1)). Same fine-tune seeds as above.", "", tables["domains"]]
    lines += ["## Pre-training sets", "", "| backbone | images | identities |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['images']} | {v['identities']} |" for k, v in sizes.items()]
    if agreement:
        lines += ["", "## Filter vs ground truth",
                  "", "Share of generated images whose predicted attribute equals the identity's true one.", "",
                  "| build | images | n | upper colour | lower colour | lower type | sleeve | all four |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for build, parts in agreement.items():
            for name, a in parts.items():
                lines.append(f"| {build} | {name} | {a['images']} | {100 * a['upper_colour']:.1f} | "
                             f"{100 * a['lower_colour']:.1f} | {100 * a['lower_type']:.1f} | {100 * a['sleeve']:.1f} | "
                             f"{100 * a['all four']:.1f} |")
    if vi is not None:
        lines += [""] + format_vi(vi)
    lines += ["", "## Time (s)", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in timings.items()]
    return "\n".join(lines) + "\n"
