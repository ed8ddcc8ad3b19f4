"""Identity fidelity of a finished Diff-Person build: do the generated images show the person they claim to?

    1. read the build: its generated images (kept ones in bounding_box_train/, dropped ones in dropped/), the
       real images of each source identity (from the build's sources in ROOT/config.yaml; a folder
       without one: the source images listed in identities.json) and, for toy-world sources, each identity's
       true attributes (the world's attributes.parquet)
    2. a Re-ID "reader" that is not the filter's model: given, or trained on those real images with another
       seed than the filter (cached in ROOT/fidelity/reader)
    3. figures for each group of generated images (all, kept, dropped) and for the real images as reference:
       id_accuracy        share whose nearest real-identity centroid (cosine, reader features) is the claimed
                          identity; chance = 1 / number of source identities
       rank1, mAP         generated images as queries against the real gallery (Market protocol, no image is
                          removed by the same-camera rule: queries get a camera of their own)
       diversity          mean intra-identity pairwise cosine distance of reader features;
                          diversity_ratio = generated / real (the reader was trained to draw the real images of
                          one person together, so the real spread is a low reference)
       views_2plus        toy world: share of identities (>= 2 images) whose images show >= 2 predicted views;
       view_entropy       their mean view entropy, normalised to [0, 1]
       attr_*             toy world: the toy attribute predictor reads the identity's true attribute;
                          attr_all_four = upper colour, lower colour, lower type and sleeve all right
    4. ROOT/fidelity.json, written atomically
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydantic import Field, field_validator

from diffreid.config import ConfigError, StageConfig, apply_overrides, deep_update, read_yaml, resolved_config
from diffreid.data.types import DatasetError, ImageRecord
from diffreid.io import atomic_write_json
from diffreid.reid.train import ReIDTrainConfig

FIDELITY = "fidelity.json"
READER_DIR = "fidelity/reader"
GROUPS = ("all", "kept", "dropped", "real")
# figure name -> toy-world attribute it compares
ATTRIBUTES = {"upper_colour": "upper_colour", "lower_colour": "lower_colour", "lower_type": "lower_type",
              "sleeve": "sleeve", "bag": "bag_type", "hair": "hair_colour"}
ALL_FOUR = ("upper_colour", "lower_colour", "lower_type", "sleeve")


class FidelityUnavailable(DatasetError):
    """The folder is a Diff-Person build, but there is nothing to measure (no generated image, < 2 identities)."""


# the reader's defaults, toy scale: the demo filter's recipe at 60 iterations (a tiny build gets as many as a
# 16-identity one). A `reader:` section or override changes only the fields it names.
TOY_READER = {"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 8, "K": 4, "epochs": 6,
              "iters_per_epoch": 10, "lr": 1e-3, "warmup_epochs": 1, "milestones": [5], "pad": 3, "num_workers": 0}


class FidelityConfig(StageConfig):
    enabled: bool = Field(True, description="a build measures itself at its end; at toy scale the reader's "
                          "training costs seconds to a minute")
    reader_model_dir: str | None = Field(None, description="a Re-ID model folder (save_reid_model) to read "
                                         "identities with; None = train one on the source identities' real images")
    reader: ReIDTrainConfig = Field(default_factory=lambda: ReIDTrainConfig.model_validate(TOY_READER),
                                    description="trains the reader when reader_model_dir is unset; fields not "
                                    "given keep TOY_READER's toy scale (resnet18 at 64x32, 60 iterations), not "
                                    "BoT's: give real data its size (256x128) and more epochs")
    seed_offset: int = Field(1, ge=1, description="reader seed = reader.runtime.seed + this, so the reader never "
                             "shares the filter's initialisation and batch order (in a build both get its seed)")
    captioner: str | None = Field("diffreid:toy-captioner", description="toy attribute predictor for the views "
                                  "and attribute figures, used only where the source has true attributes "
                                  "(a toy world); None = skip them")
    max_images_per_identity: int | None = Field(None, ge=1, description="measure only each identity's first N "
                                                "generated images (None = all); bounds the cost on large builds")

    @field_validator("reader", mode="before")
    @classmethod
    def _over_toy_reader(cls, value):
        if isinstance(value, dict):
            merged = copy.deepcopy(TOY_READER)
            deep_update(merged, copy.deepcopy(value))
            return merged
        return value


def load_fidelity_config(root: str | Path, overrides: list[str] | tuple = (), **fields) -> FidelityConfig:
    """The build's own ``fidelity:`` section (ROOT/config.yaml) when it has one, then ``key=value``
    overrides, then ``fields`` (those given as None are left out)."""
    path = resolved_config(root)
    data = dict(read_yaml(path).get("fidelity") or {}) if path else {}
    apply_overrides(data, list(overrides))
    data.update({k: v for k, v in fields.items() if v is not None})
    return FidelityConfig.validated(data, f"{path} fidelity section + overrides" if path else "overrides")


# ----------------------------------------------------------------------------------------------------------
# 1. the build: generated images, real images and true attributes of its source identities
# ----------------------------------------------------------------------------------------------------------
@dataclass
class SourceIdentities:
    records: list[ImageRecord]  # real images, pid = the build's pid
    truth: dict[int, dict] = field(default_factory=dict)  # build pid -> true attributes (toy-world sources)


def generated_images(root: Path, cfg: FidelityConfig):
    """The manifest's generated rows, at most ``max_images_per_identity`` per identity (a dropped image has no
    file when the build ran with keep_dropped=False)."""
    from diffreid.diffperson.manifest import read_manifest
    from diffreid.diffperson.writer import MANIFEST

    df = read_manifest(root)
    missing = [c for c in ("file", "pid", "origin", "kept", "source_dataset", "source_pid") if c not in df]
    if missing:
        raise DatasetError(f"{root / MANIFEST}: lacks column(s) {', '.join(missing)}; expected a Diff-Person manifest")
    df = df[df["origin"] == "generated"]
    if not len(df):
        raise FidelityUnavailable(f"{root}: the manifest lists no generated images; nothing to measure")
    if cfg.max_images_per_identity:
        df = df.groupby("pid", sort=False).head(cfg.max_images_per_identity)
    return df


def source_identities(root: Path, identities: dict[int, tuple[str, int]]) -> SourceIdentities:
    """Real images (and true attributes) of ``identities`` (build pid -> (source dataset, source pid))."""
    from diffreid.data.toyworld import read_attributes

    def truth_of(world: Path, wanted: dict[int, int]) -> dict[int, dict]:
        if not (world / "attributes.parquet").is_file():
            return {}
        table = read_attributes(world)
        return {wanted[int(row["pid"])]: row for row in table.to_dict("records") if int(row["pid"]) in wanted}

    records, truth = [], {}
    config = resolved_config(root)
    if config:  # a build: every real train image of its source identities
        from diffreid.data.sources import SourceConfig, load_source

        for item in read_yaml(config).get("sources", []):
            src = SourceConfig.model_validate(item)
            wanted = {spid: pid for pid, (name, spid) in identities.items() if name == src.name}
            if wanted:
                world, dataset = load_source(src, root)
                records += [replace(r, pid=wanted[r.pid]) for r in dataset.train if r.pid in wanted]
                truth.update(truth_of(Path(world), wanted))
    else:  # a folder written by DiffPersonWriter alone: the source images it lists
        from diffreid.diffperson.manifest import read_identities

        for ident in read_identities(root):
            pid = int(ident["pid"])
            if pid not in identities:
                continue
            paths = [Path(p) for p in ident.get("source_images", [])]
            records += [ImageRecord(str(p), pid, 0) for p in paths]
            world = paths[0].parent.parent if paths else None  # a Market-layout world: WORLD/bounding_box_train/
            if world is not None:
                truth.update(truth_of(world, {int(ident["source_pid"]): pid}))
    have = {r.pid for r in records}
    lacking = sorted(set(identities) - have)
    if lacking:
        where = config if config.is_file() else root / "identities.json"
        raise DatasetError(f"{where}: no real images found for pid(s) {lacking[:5]} "
                           f"(source identities {[identities[p] for p in lacking[:5]]})")
    return SourceIdentities(records, truth)


# ----------------------------------------------------------------------------------------------------------
# 2. the reader
# ----------------------------------------------------------------------------------------------------------
def reader_model(root: Path, cfg: FidelityConfig, records: list[ImageRecord], progress: bool):
    """``(model, info)``: the given reader, or one trained on ``records`` into ROOT/fidelity/reader (reused while
    its identities and training config stay the same)."""
    from diffreid.reid.train import ensure_reid_model
    from diffreid.reid.model import META_NAME, load_reid_model

    device = cfg.reader.runtime.torch_device()
    if cfg.reader_model_dir:
        return load_reid_model(cfg.reader_model_dir, device), {"model_dir": cfg.reader_model_dir, "trained_here": False}
    pids = sorted({int(r.pid) for r in records})
    runtime = cfg.reader.runtime.model_copy(update={"seed": cfg.reader.runtime.seed + cfg.seed_offset})
    train_cfg = cfg.reader.model_copy(update={"P": min(cfg.reader.P, len(pids)), "runtime": runtime})
    folder = root / READER_DIR
    if (folder / META_NAME).is_file() and not _same_reader(folder, pids, train_cfg):
        shutil.rmtree(folder)
    ensure_reid_model(train_cfg, records, folder, progress)
    return load_reid_model(folder, device), {"model_dir": str(folder), "trained_here": True, "seed": runtime.seed,
                                             "images": len(records)}


def _same_reader(folder: Path, pids: list[int], train_cfg: ReIDTrainConfig) -> bool:
    from diffreid.reid.model import META_NAME

    saved = folder / "train_config.yaml"
    try:
        same_cfg = saved.is_file() and ReIDTrainConfig.load(saved) == train_cfg
    except ConfigError:
        return False
    return same_cfg and json.loads((folder / META_NAME).read_text()).get("label_pids") == pids


def features(model, paths: list, cfg: FidelityConfig) -> np.ndarray:
    from diffreid.reid.features import extract_features

    height, width = model.input_size or (cfg.reader.height, cfg.reader.width)
    return extract_features(model, paths, batch_size=cfg.reader.eval_batch_size,
                            device=cfg.reader.runtime.torch_device(), height=height, width=width,
                            dtype=cfg.reader.runtime.torch_dtype())


# ----------------------------------------------------------------------------------------------------------
# 3. figures
# ----------------------------------------------------------------------------------------------------------
def attribute_hits(predictions: list[dict], truths: list[dict]):
    """One row per image: does the predicted attribute equal the true one (columns: ATTRIBUTES keys, all_four)."""
    import pandas as pd

    df = pd.DataFrame([{name: pred[attr] == true[attr] for name, attr in ATTRIBUTES.items()}
                       for pred, true in zip(predictions, truths)], columns=list(ATTRIBUTES), dtype=bool)
    df["all_four"] = df[list(ALL_FOUR)].all(axis=1)
    return df


def predict_attributes(captioner, paths: list, batch: int = 256) -> list[dict]:
    from diffreid.reid.features import load_rgb

    out = []
    for i in range(0, len(paths), batch):
        out += captioner.predict([load_rgb(p) for p in paths[i:i + batch]])
    return out


def intra_identity_distance(feats: np.ndarray, pids: np.ndarray) -> float | None:
    """Mean over identities (>= 2 images) of the mean pairwise cosine distance between their features."""
    values = []
    for pid in np.unique(pids):
        f = feats[pids == pid]
        n = len(f)
        if n >= 2:
            sim = f @ f.T
            values.append(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))
    return float(np.mean(values)) if values else None


def view_spread(views: list[str | None], pids: np.ndarray, num_views: int) -> tuple[float | None, float | None]:
    """(share of identities whose images show >= 2 views, mean normalised view entropy), over identities with
    >= 2 images that have a predicted view."""
    from collections import Counter

    per_id: dict[int, list[str]] = {}
    for view, pid in zip(views, pids):
        if view is not None:
            per_id.setdefault(int(pid), []).append(view)
    two, entropy = [], []
    for seen in per_id.values():
        if len(seen) < 2:
            continue
        p = np.array(list(Counter(seen).values()), dtype=float) / len(seen)
        two.append(len(p) >= 2)
        entropy.append(float(-(p * np.log(p)).sum() / math.log(num_views)))
    return (float(np.mean(two)), float(np.mean(entropy))) if two else (None, None)


@dataclass
class Images:
    """One set of images to score: reader features, claimed build pids, and toy-world readings."""

    feats: np.ndarray
    pids: np.ndarray
    views: list  # predicted view per image (None: no prediction)
    hits: object  # DataFrame of attribute_hits, NaN rows where the identity has no true attributes

    def take(self, mask: np.ndarray) -> Images:
        return Images(self.feats[mask], self.pids[mask], [v for v, m in zip(self.views, mask) if m],
                      self.hits[mask].reset_index(drop=True))


def group_figures(images: Images, real: Images, real_cams: np.ndarray, centroid_pids: np.ndarray,
                  centroids: np.ndarray, num_views: int, generated: bool = True) -> dict:
    """The figures of one group (``generated=False``: the real images, as reference)."""
    from diffreid.reid.metrics import compute_distmat, evaluate_rank

    n = len(images.pids)
    out: dict = {"images": int(n), "identities": int(len(np.unique(images.pids)))}
    names = ["id_accuracy", "rank1", "mAP", "diversity", "diversity_ratio", "views_2plus", "view_entropy",
             *(f"attr_{k}" for k in (*ATTRIBUTES, "all_four"))]
    out.update(dict.fromkeys(names))
    if n == 0:
        return out
    if generated:
        nearest = centroid_pids[np.argmax(images.feats @ centroids.T, axis=1)]
        out["id_accuracy"] = float(np.mean(nearest == images.pids))
        distmat = compute_distmat(images.feats, real.feats, metric="cosine")
        rank = evaluate_rank(distmat, images.pids, real.pids, np.full(n, -1), real_cams).as_dict()
        out["rank1"], out["mAP"] = rank["Rank-1"], rank["mAP"]
    out["diversity"] = intra_identity_distance(images.feats, images.pids)
    if generated:
        reference = intra_identity_distance(real.feats, real.pids)
        if out["diversity"] is not None and reference:
            out["diversity_ratio"] = out["diversity"] / reference
    out["views_2plus"], out["view_entropy"] = view_spread(images.views, images.pids, num_views)
    known = images.hits.dropna()
    if len(known):
        for name in known.columns:
            out[f"attr_{name}"] = float(known[name].astype(bool).mean())
    return out


def measure_fidelity(root: str | Path, cfg: FidelityConfig | None = None, progress: bool = False) -> dict:
    """Score the identity fidelity of the Diff-Person build in ``root`` and write ROOT/fidelity.json; returns
    the same dict (see the module docstring for the figures). ``cfg`` None: the build's own settings."""
    import pandas as pd

    # 1. check inputs, read the build (read_manifest checks that ROOT is a Diff-Person folder)
    t0 = time.time()
    root = Path(root).resolve()
    cfg = cfg or load_fidelity_config(root)
    df = generated_images(root, cfg)
    unwritten = int((df["file"] == "").sum())
    df = df[df["file"] != ""].reset_index(drop=True)
    if not len(df):
        raise FidelityUnavailable(f"{root}: no generated image has a file (written with keep_dropped=False and "
                                  "none kept?); nothing to measure")
    identities = {int(p): (str(d), int(s)) for p, d, s in
                  df[["pid", "source_dataset", "source_pid"]].drop_duplicates().itertuples(index=False)}
    if len(identities) < 2:
        raise FidelityUnavailable(f"{root}: generated images of {len(identities)} identity; identity accuracy "
                                  "needs at least 2 source identities to choose between")
    sources = source_identities(root, identities)
    real_recs = sources.records

    # 2. reader model and features
    model, reader_info = reader_model(root, cfg, real_recs, progress)
    gen_paths = [root / f for f in df["file"]]
    gen_pids = df["pid"].to_numpy(dtype=np.int64)
    real_pids = np.array([r.pid for r in real_recs], dtype=np.int64)
    gen_feats, real_feats = features(model, gen_paths, cfg), features(model, [r.path for r in real_recs], cfg)
    centroid_pids = np.array(sorted(identities), dtype=np.int64)
    centroids = np.stack([real_feats[real_pids == p].mean(0) for p in centroid_pids])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)

    # 3. toy world: views and attributes read by the toy attribute predictor
    num_views = 3
    gen_views, real_views = [None] * len(df), [None] * len(real_recs)
    gen_hits = pd.DataFrame(index=range(len(df)), columns=[*ATTRIBUTES, "all_four"], dtype=object)
    real_hits = pd.DataFrame(index=range(len(real_recs)), columns=[*ATTRIBUTES, "all_four"], dtype=object)
    if sources.truth and cfg.captioner:
        from diffreid.generation.toy_captioner import HEADS, ToyCaptioner
        from diffreid.models.assets import resolve_model_path

        captioner = ToyCaptioner(resolve_model_path(cfg.captioner), runtime=cfg.reader.runtime)
        num_views = len(HEADS["view"])
        for paths, pids, views, hits in ((gen_paths, gen_pids, gen_views, gen_hits),
                                         ([r.path for r in real_recs], real_pids, real_views, real_hits)):
            idx = [i for i, p in enumerate(pids) if int(p) in sources.truth]
            preds = predict_attributes(captioner, [paths[i] for i in idx])
            for i, pred in zip(idx, preds):
                views[i] = pred["view"]
            if idx:
                hits.loc[idx] = attribute_hits(preds, [sources.truth[int(pids[i])] for i in idx]).to_numpy()

    # 4. figures per group
    gen = Images(gen_feats, gen_pids, gen_views, gen_hits)
    real = Images(real_feats, real_pids, real_views, real_hits)
    real_cams = np.array([r.camid for r in real_recs], dtype=np.int64)
    kept = df["kept"].astype(bool).to_numpy()
    masks = {"all": np.ones(len(df), dtype=bool), "kept": kept, "dropped": ~kept}
    groups = {name: group_figures(gen.take(m), real, real_cams, centroid_pids, centroids, num_views)
              for name, m in masks.items()}
    groups["real"] = group_figures(real, real, real_cams, centroid_pids, centroids, num_views, generated=False)

    # 5. write
    result = {"root": str(root), "identities": len(identities), "chance": 1.0 / len(identities),
              "ground_truth": bool(sources.truth and cfg.captioner), "unwritten_images": unwritten,
              "reader": reader_info, "groups": groups, "seconds": round(time.time() - t0, 1),
              "config": cfg.model_dump(mode="json")}
    atomic_write_json(root / FIDELITY, result)
    return result


def read_fidelity(root: str | Path) -> dict | None:
    """ROOT/fidelity.json, or None when the build has none."""
    path = Path(root) / FIDELITY
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------------------
# 4. tables
# ----------------------------------------------------------------------------------------------------------
ROWS = [("images", "images", "n"), ("identities", "identities", "n"), ("id_accuracy", "identity accuracy", "%"),
        ("rank1", "Rank-1 vs real gallery", "%"), ("mAP", "mAP vs real gallery", "%"),
        ("diversity", "intra-identity distance", "f"), ("diversity_ratio", "  ratio to real", "f"),
        ("views_2plus", "identities with >= 2 views", "%"), ("view_entropy", "view entropy (0-1)", "f"),
        *((f"attr_{k}", f"attribute: {k.replace('_', ' ')}", "%") for k in (*ATTRIBUTES, "all_four"))]


def fidelity_rows(result: dict) -> list[dict]:
    """Rows ``{"metric", "all", "kept", "dropped", "real"}`` of formatted figures; rows with no figure are left out."""
    rows = []
    for key, label, kind in ROWS:
        values = [result["groups"][g].get(key) for g in GROUPS]
        if all(v is None for v in values):
            continue
        cells = ["–" if v is None else str(v) if kind == "n" else f"{100 * v:.1f}%" if kind == "%" else f"{v:.3f}"
                 for v in values]
        rows.append({"metric": label, **dict(zip(GROUPS, cells))})
    return rows


def fidelity_note(result: dict) -> str:
    reader = result["reader"]
    how = (f"trained on the real images (seed {reader.get('seed')})" if reader.get("trained_here")
           else f"given ({reader['model_dir']})")
    return (f"{result['identities']} source identities, chance {100 * result['chance']:.1f}%; Re-ID reader "
            f"{how}, not the filter's model; real = the source identities' real images (reference).")


def format_fidelity(result: dict) -> str:
    """The figures as a plain-text table: rows metrics, columns all / kept / dropped / real."""
    rows = fidelity_rows(result)
    width = max(len(r["metric"]) for r in rows) + 2
    lines = [f"identity fidelity of {result['root']}", f"  {fidelity_note(result)}",
             "  " + "metric".ljust(width) + "".join(g.rjust(10) for g in GROUPS)]
    lines += ["  " + r["metric"].ljust(width) + "".join(r[g].rjust(10) for g in GROUPS) for r in rows]
    return "\n".join(lines)
