"""``expand_vi``: DiVE end to end — modality adapter, infrared generation for RGB-only identities,
cross-modal filtering, and the SYSU-MM01-style output (see ``diffreid.vi.layout`` for the layout).

Steps (each resumable: a re-run with the same config reuses the adapter, scorer and committed identities):
1. read the VI dataset (both modalities) and the RGB dataset, check IR cameras, pick identities;
2. give the RGB identities new pids above the VI dataset's ids and link the VI dataset into the output;
3. train the modality adapter (shared LoRA + one token per VI and RGB identity);
4. train (or load) the cross-modal Re-ID scorer and build the RGB gallery of the expanded identities;
5. per chunk of identities: sample IR (and optional RGB) images in mixed batches, score, write, commit;
6. write the id lists, the merged manifest and ``summary.json`` (with ``fidelity_reader``: how often an
   independent cross-modality model recognises each generated IR image as its identity).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffreid.config import RESOLVED_CONFIG, ConfigError
from diffreid.data import load_dataset
from diffreid.data.types import DatasetError, ImageRecord, ReIDDataset
from diffreid.io import atomic_write_json
from diffreid.vi.config import VIExpandConfig
from diffreid.vi.layout import Generated, expansion_writer
from diffreid.vi.modality import PromptMaker, generate, identity_captions, train_modality_adapter, training_images

ADAPTER_DIR = "adapter"
SCORER_DIR = "scorer"
FILTER_DIR = "filter"
SUMMARY = "summary.json"
FIDELITY_DIR = "fidelity-reader"
CAPTIONS_DIR = "captions"
ADAPTER_NAME = "vi_modality"


@dataclass
class VIExpandResult:
    out: Path
    summary: dict
    lists: dict[str, list[int]] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# 1. inputs
# ----------------------------------------------------------------------------------------------------------
def resolve_toy(cfg: VIExpandConfig, out: Path) -> VIExpandConfig:
    """The toy-fallback rule of every stage: an empty root with a toy world beside it renders that world into
    OUT/toy/; ``pipeline.path: diffreid:tiny`` builds the tiny pipeline into OUT/models (made on first use)."""
    from diffreid.data.toyworld import render_world
    from diffreid.models.assets import resolve_base_model

    update: dict = {}
    for name, world, folder in (("vi_root", cfg.vi_toyworld, "vi"), ("rgb_root", cfg.rgb_toyworld, "rgb")):
        if getattr(cfg, name):
            continue
        if world is None:
            raise ConfigError(f"{name} is empty: give the dataset folder, or a {name.split('_')[0]}_toyworld to "
                              "render the toy world")
        update[name] = str(render_world(world, out / "toy" / folder, progress=False))
    if not cfg.rgb_root:
        update.update(rgb_dataset="market_layout", rgb_options={"splits": [cfg.rgb_split]})
    if not cfg.vi_root:
        update["vi_dataset"] = "sysu_mm01"
    if not cfg.pipeline.path:
        raise ConfigError("pipeline.path is empty: give a diffusers folder or hub id (diffreid:toy-base and "
                          "diffreid:tiny name the toy models)")
    path = resolve_base_model(cfg.pipeline.path, out, cfg.runtime.seed, cfg.sampler.height, cfg.sampler.width)
    if path != cfg.pipeline.path:
        update["pipeline"] = cfg.pipeline.model_copy(update={"path": path})
    return cfg.model_copy(update=update)


def vi_train_records(dataset: ReIDDataset, max_ids: int | None) -> list[ImageRecord]:
    """The VI train split (lowest ``max_ids`` pids), checked to hold infrared and visible images."""
    records = dataset.train
    ir = [r for r in records if r.modality == "ir"]
    if not ir:
        raise DatasetError(f"VI dataset {dataset.name} at {dataset.root} has no infrared images in its train split "
                           "(SYSU-MM01 keeps them under cam3/ and cam6/, RegDB under Thermal/, LLCM under nir/); "
                           "the modality adapter needs both modalities")
    if not any(r.modality == "rgb" for r in records):
        raise DatasetError(f"VI dataset {dataset.name} at {dataset.root} has no visible images in its train split")
    if max_ids is not None:
        keep = set(sorted({r.pid for r in records})[:max_ids])
        records = [r for r in records if r.pid in keep]
    return records


def rgb_identities(cfg: VIExpandConfig) -> tuple[str, dict[int, list[ImageRecord]]]:
    """(source dataset name, source pid -> its visible records) of the identities to expand."""
    dataset = load_dataset(cfg.rgb_dataset, cfg.rgb_root, **cfg.rgb_options)
    groups: dict[int, list[ImageRecord]] = {}
    for r in dataset.split(cfg.rgb_split):
        if r.modality == "rgb" and r.pid > 0:
            groups.setdefault(r.pid, []).append(r)
    if not groups:
        raise DatasetError(f"{cfg.rgb_dataset} at {cfg.rgb_root}: no visible images with pid > 0 in the "
                           f"{cfg.rgb_split} split")
    if cfg.rgb_ids is not None:
        unknown = sorted(set(cfg.rgb_ids) - set(groups))
        if unknown:
            raise ConfigError(f"rgb_ids: {unknown[:10]} are not in the {cfg.rgb_split} split of {cfg.rgb_dataset} "
                              f"at {cfg.rgb_root}")
        groups = {pid: groups[pid] for pid in cfg.rgb_ids}
    pids = sorted(groups)[:cfg.max_rgb_ids] if cfg.max_rgb_ids else sorted(groups)
    return dataset.name, {pid: groups[pid] for pid in pids}


def camera_sets(records: list[ImageRecord]) -> tuple[list[int], list[int]]:
    """(visible, infrared) 1-based cameras of the VI dataset."""
    rgb = sorted({r.camid + 1 for r in records if r.modality == "rgb"})
    ir = sorted({r.camid + 1 for r in records if r.modality == "ir"})
    return rgb, ir


# ----------------------------------------------------------------------------------------------------------
# 2. the run
# ----------------------------------------------------------------------------------------------------------
def expand_vi(cfg: VIExpandConfig, out_dir: str | Path, progress: bool | None = None) -> VIExpandResult:
    """Run DiVE's VI expansion into ``out_dir``; returns the summary (also written to ``summary.json``)."""
    from tqdm.auto import tqdm

    from diffreid.filtering import decide, score_all
    from diffreid.generation.adapters import load_identity_adapter
    from diffreid.models.pipeline import load_pipeline
    from diffreid.vi.scorer import build_vi_filters, evaluate_scorer, train_or_load_scorer

    # 1. inputs
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = resolve_toy(cfg, out)
    cfg.to_yaml(out / RESOLVED_CONFIG)
    vi = load_dataset(cfg.vi_dataset, cfg.vi_root, **cfg.vi_options)
    vi_train = vi_train_records(vi, cfg.max_vi_ids)
    rgb_cams, ir_cams = camera_sets(vi.train)
    source_name, rgb = rgb_identities(cfg)

    # 2. pids and the VI dataset's own folders
    writer = expansion_writer(cfg.vi_dataset, out, vi.root, new_pid_start=cfg.new_pid_start,
                              link_mode=cfg.link_mode, jpeg_quality=cfg.jpeg_quality, keep_dropped=cfg.keep_dropped)
    new_pids = writer.assign_pids([(source_name, pid) for pid in rgb])
    by_new = dict(zip(new_pids, rgb.values()))
    source_of = dict(zip(new_pids, rgb))
    writer.link_vi_dataset()
    summary: dict = {"vi_dataset": str(vi.root), "rgb_dataset": f"{source_name} ({cfg.rgb_root})",
                     "vi_train_ids": len({r.pid for r in vi_train}), "rgb_ids": len(rgb),
                     "new_pids": [min(new_pids), max(new_pids)], "ir_cameras": ir_cams, "rgb_cameras": rgb_cams}

    # 3. modality adapter
    pipe = load_pipeline(cfg.pipeline)
    captions = {}
    if cfg.lpe is not None:
        visible = {}
        for r in vi_train:
            if r.modality != "ir":
                visible.setdefault(r.pid, []).append(r)
        captions = identity_captions(cfg.lpe, {**visible, **by_new}, out / CAPTIONS_DIR)
        summary["captions"] = {"identities": len(captions), "example": next(iter(captions.values()), "")}
    prompt = PromptMaker(cfg.prompt_template, dict(cfg.modality_words), cfg.camera_words, captions)
    train_set = training_images(vi_train, by_new, cfg.adapter, prompt, cfg.train_images_per_id)
    adapter = train_modality_adapter(pipe, train_set, cfg.adapter, out / ADAPTER_DIR)
    summary["adapter"] = {"seconds": round(adapter.seconds, 2), "steps": adapter.steps, "images": len(train_set),
                          "tokens": len(adapter.tokens), "bytes": adapter.bytes,
                          "loss_first": float(np.mean(adapter.losses[:10])),
                          "loss_last": float(np.mean(adapter.losses[-10:]))}
    loaded = load_identity_adapter(pipe, out / ADAPTER_DIR, ADAPTER_NAME)

    # 4. cross-modal scorer and the RGB gallery of the expanded identities
    model_dir, scorer_seconds = train_or_load_scorer(
        cfg.scorer.model_copy(update={"model_dir": cfg.scorer.model_dir or cfg.filter.reid_model_dir}),
        vi_train, out / SCORER_DIR, progress=bool(progress))
    summary["scorer"] = {"model_dir": str(model_dir), "train_seconds": round(scorer_seconds, 2)}
    if cfg.scorer.evaluate:
        summary["scorer"].update(evaluate_scorer(model_dir, cfg.vi_dataset, cfg.vi_root, cfg.vi_options, cfg.runtime,
                                                 cfg.scorer.eval_trials, cfg.runtime.seed))
    filters = build_vi_filters(cfg.filter, model_dir, by_new, cfg.runtime, cfg.filter.gallery_dir or out / FILTER_DIR)

    # 5. generate, score, write, one chunk of identities at a time
    todo = [pid for pid in new_pids if not writer.has_identity(pid)]
    chunks = [todo[i:i + cfg.ids_per_chunk] for i in range(0, len(todo), cfg.ids_per_chunk)]
    t0, written = time.perf_counter(), 0
    for chunk in tqdm(chunks, desc="vi-expand", unit="chunk", disable=not progress):
        batches = [("ir", ir_cams, cfg.ir_images_per_id, 0)]
        if cfg.rgb_images_per_id:
            batches.append(("rgb", rgb_cams, cfg.rgb_images_per_id, cfg.ir_images_per_id))
        made: dict[int, list[tuple]] = {pid: [] for pid in chunk}
        inits = {pid: [r.path for r in by_new[pid]] for pid in chunk} if cfg.sampler.init_strength else None
        for modality, cams, per_id, start in batches:
            for pid, items in generate(pipe, ADAPTER_NAME, chunk, loaded.tokens, modality, cams, per_id, cfg.sampler,
                                       prompt, start, inits).items():
                made[pid] += [(as_infrared(g) if modality == "ir" and cfg.ir_grey else g, cam, modality)
                              for g, cam in items]
        flat = [(pid, *item) for pid in chunk for item in made[pid]]
        scores = score_all(filters, [g.image for _, g, _, _ in flat], [pid for pid, *_ in flat])
        keep = decide(scores, cfg.filter)
        columns = {k: v for k, v in scores.items() if not k.endswith("_keep")}
        at = 0
        for pid in chunk:
            gens = []
            for g, cam, modality in made[pid]:
                record = {**g.record, "base_model": cfg.pipeline.path}
                gens.append(Generated(g.image, cam, modality, record,
                                      {k: float(v[at]) for k, v in columns.items()}, bool(keep[at])))
                at += 1
            kept_ir = sum(g.kept for g in gens if g.modality == "ir")
            expanded = kept_ir >= cfg.min_kept_ir
            sources = [(r.path, rgb_cams[r.camid % len(rgb_cams)], r.camid) for r in by_new[pid]]
            written += writer.write_identity(pid, sources, gens, expanded=expanded,
                                             info={"kept_ir": kept_ir, "source_pid": source_of[pid]})
    summary["generation"] = {"seconds": round(time.perf_counter() - t0, 2), "identities_this_run": len(todo)}

    # 6. lists, manifest, summary
    lists = writer.close()
    summary.update(manifest_summary(out))
    summary["expanded_ids"] = len(writer.expanded_pids())
    summary["lists"] = {name: len(ids) for name, ids in lists.items()}
    if cfg.fidelity_reader is not None:
        from diffreid.vi.fidelity import vi_fidelity

        reader_dir, _ = train_or_load_scorer(cfg.fidelity_reader, vi_train, out / FIDELITY_DIR,
                                             progress=bool(progress))
        summary["fidelity"] = {"reader": str(reader_dir), **vi_fidelity(out, reader_dir, cfg.runtime)}
    atomic_write_json(out / SUMMARY, summary)
    return VIExpandResult(out=out, summary=summary, lists=lists)


def as_infrared(g):
    """The generated image as an infrared camera stores it: its luminance in three equal channels."""
    from dataclasses import replace

    return replace(g, image=g.image.convert("L").convert("RGB"))


def manifest_summary(out: Path) -> dict:
    import pandas as pd

    df = pd.read_parquet(out / "manifest.parquet")
    gen = df[df["origin"] == "generated"]
    score_cols = [c for c in gen.columns if c.startswith("score_")]
    return {
        "images_written": int((df["file"] != "").sum()),
        "generated": int(len(gen)), "generated_kept": int(gen["kept"].sum()),
        "source_copied": int(((df["origin"] == "source") & df["kept"]).sum()),
        "scores": {c.removeprefix("score_"): {"mean": float(gen[c].mean()), "min": float(gen[c].min()),
                                              "max": float(gen[c].max())} for c in score_cols if len(gen)},
    }
