"""Fine-tune + evaluate in the paper's settings (§4.2): supervised, few-shot "Fs" (p% of the images of every
identity), small-scale "Ss" (p% of the identities), direct cross-domain transfer (train on A, test on B),
unsupervised (cluster contrast on the target's unlabelled train split, Table 4), unsupervised domain adaptation
"uda" (supervised on a labelled source, then cluster contrast on the unlabelled target, Table 5) and domain
generalisation "dg" (several labelled sources merged, each unseen target over its random splits, Table 6), each
from several backbone initialisations (the project's pre-trained backbone, local ImageNet weights, random).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Literal, Sequence

import numpy as np
from pydantic import BaseModel, Field, model_validator

from diffreid.config import ConfigError, StageConfig
from diffreid.data.types import ImageRecord
from diffreid.io import atomic_path, atomic_write_text
from diffreid.reid.cluster_contrast import ClusterContrastConfig
from diffreid.reid.train import ReIDTrainConfig

Setting = Literal["supervised", "fs", "ss", "cross_domain", "unsupervised", "uda", "dg"]
METRIC_COLUMNS = ["mAP", "Rank-1", "mINP"]


class DatasetRef(BaseModel):
    name: str = Field("market_layout", description="any name diffreid.data.load_dataset knows")
    root: str = Field(..., description="dataset folder")


class FinetuneEvalConfig(StageConfig):
    target: DatasetRef | None = Field(None, description="fine-tune on its train split (unsupervised, uda: without "
                                      "its labels), evaluate on its query/gallery; needed by every setting but dg")
    cross_domain: DatasetRef | None = Field(None, description="also evaluate the supervised model on this dataset")
    uda_source: DatasetRef | None = Field(None, description="uda: the labelled source trained on (supervised) "
                                          "before cluster contrast on the unlabelled target")
    dg_sources: list[DatasetRef] = Field([], description="dg: labelled sources whose train splits are merged "
                                         "(pids and cameras kept apart per source); META/MetaBIN use Market-1501, "
                                         "CUHK02, CUHK03, CUHK-SYSU")
    dg_targets: list[DatasetRef] = Field([], description="dg: unseen targets, each evaluated on its test split; "
                                         "META/MetaBIN use PRID, GRID, VIPeR, i-LIDS")
    dg_splits: int = Field(10, ge=1, le=10, description="dg: META/MetaBIN report mean ± std over 10 random "
                           "query/gallery splits (splits 0..n-1; a target whose reader has no split is read once)")
    cluster: ClusterContrastConfig = Field(default_factory=ClusterContrastConfig,
                                           description="unsupervised and uda: the cluster-contrast stage")
    settings: list[Setting] = Field(["supervised", "fs", "ss"], description="the paper's Tables 2-3 settings")
    fractions: list[int] = Field([10, 30, 50, 70, 90], description="p% for Fs/Ss (paper §4.2)")
    seeds: list[int] = Field([0], description="one subsample + training seed per entry; use >=3 to report spread")
    inits: dict[str, str | None] = Field(
        {"random": None}, description="name -> timm weight file (None = random init); e.g. diffperson: OUT/backbone.safetensors")
    train: ReIDTrainConfig = Field(default_factory=ReIDTrainConfig, description="the Re-ID trainer for every run "
                                   "(BoT defaults); each run sets its own init weights and seed")
    target_required: ClassVar[bool] = True  # False in a template whose composing job sets the target

    @model_validator(mode="after")
    def _check(self):
        bad = [p for p in self.fractions if not 0 < p <= 100]
        if bad:
            raise ValueError(f"fractions must be percentages in (0, 100], got {bad}")
        if "cross_domain" in self.settings and self.cross_domain is None:
            raise ValueError("settings has cross_domain but the cross_domain dataset is not set")
        needs_target = [s for s in self.settings if s != "dg"]
        if needs_target and self.target is None and self.target_required:
            raise ValueError(f"target is not set: settings {needs_target} train or evaluate on it")
        if "uda" in self.settings and self.uda_source is None:
            raise ValueError("settings has uda but uda_source (the labelled source dataset) is not set")
        for name in ("dg_sources", "dg_targets"):
            if "dg" in self.settings and not getattr(self, name):
                raise ValueError(f"settings has dg but {name} is empty")
        return self


    def missing_files(self) -> list[str]:
        """The named weight files and dataset folders that do not exist (checked before any run starts)."""
        missing = [f"inits.{name}: weight file {path} does not exist"
                   for name, path in self.inits.items() if path is not None and not Path(path).is_file()]
        refs = [(name, getattr(self, name)) for name in ("target", "cross_domain", "uda_source")]
        refs += [(f"{name}[{i}]", ref) for name in ("dg_sources", "dg_targets")
                 for i, ref in enumerate(getattr(self, name))]
        for name, ref in refs:
            if ref is not None and not Path(ref.root).is_dir():
                missing.append(f"{name}.root: folder {ref.root} does not exist")
        return missing


class FinetuneEvalTemplate(FinetuneEvalConfig):
    """A FinetuneEvalConfig inside a composed job, which may leave the target to the job (run_all: the build's
    first source; the study: its target world)."""

    target: DatasetRef | None = Field(None, description="None: the composing job sets it")
    target_required: ClassVar[bool] = False

    def complete(self, **fields) -> FinetuneEvalConfig:
        """The stage config with the job's fields (target, inits) filled in."""
        return FinetuneEvalConfig.validated({**self.model_dump(mode="json"), **fields}, "finetune_eval")


def fewshot_images(records: Sequence[ImageRecord], percent: float, seed: int) -> list[ImageRecord]:
    """Fs: keep ceil(p% of each identity's images), at least one per identity; seeded."""
    rng = np.random.default_rng(seed)
    by_pid: dict[int, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_pid[r.pid].append(r)
    kept = []
    for pid in sorted(by_pid):
        group = sorted(by_pid[pid], key=lambda r: r.path)
        n = max(1, math.ceil(len(group) * percent / 100))
        kept += [group[i] for i in sorted(rng.choice(len(group), size=n, replace=False))]
    return kept


def smallscale_ids(records: Sequence[ImageRecord], percent: float, seed: int) -> list[ImageRecord]:
    """Ss: keep all images of round(p% of the identities), at least two identities; seeded."""
    pids = sorted({r.pid for r in records})
    n = min(len(pids), max(2, round(len(pids) * percent / 100)))
    chosen = set(np.random.default_rng(seed).choice(pids, size=n, replace=False).tolist())
    return [r for r in records if r.pid in chosen]


def require_files(cfg: FinetuneEvalConfig) -> None:
    """Raise one ConfigError listing every missing weight file and dataset folder, before any run starts."""
    missing = cfg.missing_files()
    if missing:
        raise ConfigError("fine-tune config:" + "".join(f"\n  - {m}" for m in missing))


def planned_runs(cfg: FinetuneEvalConfig) -> list[dict]:
    runs = []
    for init in cfg.inits:
        for seed in cfg.seeds:
            if "supervised" in cfg.settings or "cross_domain" in cfg.settings:
                runs.append({"setting": "supervised", "percent": 100, "init": init, "seed": seed})
            for setting in ("fs", "ss"):
                if setting in cfg.settings:
                    runs += [{"setting": setting, "percent": p, "init": init, "seed": seed} for p in cfg.fractions]
            runs += [{"setting": setting, "percent": 100, "init": init, "seed": seed}
                     for setting in ("unsupervised", "uda", "dg") if setting in cfg.settings]
    return runs


def merge_sources(datasets: Sequence) -> list[ImageRecord]:
    """The train splits of several datasets as one: pids renumbered 1.. per (source, pid) and cameras shifted
    past the previous sources', so identities (and cameras) of different sources never merge."""
    merged, pid_offset, cam_offset = [], 0, 0
    for dataset in datasets:
        pids = {pid: i + 1 for i, pid in enumerate(sorted({r.pid for r in dataset.train}))}
        merged += [replace(r, pid=pid_offset + pids[r.pid], camid=cam_offset + r.camid) for r in dataset.train]
        pid_offset += len(pids)
        cam_offset += max((r.camid for r in dataset.train), default=-1) + 1
    return merged


def dg_labels(refs: Sequence[DatasetRef]) -> list[str]:
    """The dg row label of each target: its name, with its position where two targets share a name."""
    names = [ref.name for ref in refs]
    return [f"dg:{n}" if names.count(n) == 1 else f"dg:{n}[{i}]" for i, n in enumerate(names)]


def run_one(cfg: FinetuneEvalConfig, run: dict, progress: bool = False) -> list[dict]:
    """One planned run: subsample, fine-tune from the run's init, evaluate (and cross-domain for supervised);
    unsupervised / uda / dg runs go to :func:`run_adaptation` / :func:`run_dg`."""
    from diffreid.data import load_dataset
    from diffreid.reid.train import evaluate_reid, train_reid

    train = cfg.train.model_dump(mode="json")
    train_cfg = ReIDTrainConfig.model_validate({
        **train, "model": {**train["model"], "pretrained_file": cfg.inits[run["init"]]},
        "runtime": {**train["runtime"], "seed": run["seed"]}})
    if run["setting"] in ("unsupervised", "uda"):
        return run_adaptation(cfg, run, train_cfg, progress)
    if run["setting"] == "dg":
        return run_dg(cfg, run, train_cfg, progress)
    target = load_dataset(cfg.target.name, cfg.target.root)
    records = target.train
    if run["setting"] == "fs":
        records = fewshot_images(records, run["percent"], run["seed"])
    elif run["setting"] == "ss":
        records = smallscale_ids(records, run["percent"], run["seed"])
        ids = len({r.pid for r in records})
        if ids < train_cfg.P:  # e.g. Ss 10% of 48 identities is 5: a P×K batch holds every identity there is
            train_cfg = train_cfg.model_copy(update={"P": max(2, ids)})
    model = train_reid(train_cfg, records, progress=progress).model
    evals = [(run["setting"], target)] if run["setting"] in cfg.settings else []
    if run["setting"] == "supervised" and "cross_domain" in cfg.settings:
        evals.append(("cross_domain", load_dataset(cfg.cross_domain.name, cfg.cross_domain.root)))
    rows = []
    for setting, dataset in evals:
        metrics = evaluate_reid(model, dataset, train_cfg)
        rows.append({**run, "setting": setting, "train_images": len(records),
                     "train_ids": len({r.pid for r in records}), "eval_dataset": dataset.name,
                     **{k: float(metrics[k]) for k in METRIC_COLUMNS}})
    return rows


def run_adaptation(cfg: FinetuneEvalConfig, run: dict, train_cfg, progress: bool = False) -> list[dict]:
    """unsupervised: cluster contrast (Dai et al. 2021) on the target's train split from the run's init; uda: the
    same after supervised training on ``uda_source``. Labels of the target's train split are never read; the
    row's train_ids is the last epoch's cluster count (pseudo-identities)."""
    from diffreid.data import load_dataset
    from diffreid.reid.cluster_contrast import cluster_contrast
    from diffreid.reid.model import build_reid_model
    from diffreid.reid.train import evaluate_reid, train_reid

    # 1. start: the run's init (unsupervised) or a model trained on the labelled source (uda)
    target = load_dataset(cfg.target.name, cfg.target.root)
    if run["setting"] == "uda":
        source = load_dataset(cfg.uda_source.name, cfg.uda_source.root)
        model = train_reid(train_cfg, source.train, progress=progress).model
    else:
        model = build_reid_model(train_cfg.model, 1, (train_cfg.height, train_cfg.width))
        model.input_size = (train_cfg.height, train_cfg.width)
    # 2. cluster contrast on the unlabelled target
    unlabelled = [replace(r, pid=-1) for r in target.train]
    result = cluster_contrast(model, unlabelled, cfg.cluster, train_cfg, progress=progress)
    # 3. Market-protocol evaluation on the target
    metrics = evaluate_reid(result.model, target, train_cfg)
    last = result.history[-1]
    return [{**run, "train_images": len(unlabelled), "train_ids": last["clusters"], "pseudo_ids": last["clusters"],
             "outliers": last["outliers"], "eval_dataset": target.name,
             **{k: float(metrics[k]) for k in METRIC_COLUMNS}}]


def run_dg(cfg: FinetuneEvalConfig, run: dict, train_cfg, progress: bool = False) -> list[dict]:
    """dg: supervised training on the merged ``dg_sources`` from the run's init, then each ``dg_targets`` entry
    on its splits 0..dg_splits-1 (``load_dataset(name, root, split=k)``; a reader without ``split`` is read once).
    One row per target and split, labelled ``dg:<name>``, so the summary is the mean ± std over splits (and seeds)."""
    from diffreid.data import load_dataset
    from diffreid.data.readers._registry import reader_options
    from diffreid.reid.train import evaluate_reid, train_reid

    records = merge_sources([load_dataset(ref.name, ref.root) for ref in cfg.dg_sources])
    model = train_reid(train_cfg, records, progress=progress).model
    rows = []
    for label, ref in zip(dg_labels(cfg.dg_targets), cfg.dg_targets):
        splits = range(cfg.dg_splits) if "split" in reader_options(ref.name) else [None]
        for k in splits:
            dataset = load_dataset(ref.name, ref.root, **({} if k is None else {"split": k}))
            metrics = evaluate_reid(model, dataset, train_cfg)
            rows.append({**run, "setting": label, "split": k, "train_images": len(records),
                         "train_ids": len({r.pid for r in records}), "eval_dataset": dataset.name,
                         **{m: float(metrics[m]) for m in METRIC_COLUMNS}})
    return rows


class RunLog:
    """OUT/runs.jsonl: each finished run's rows, appended as it ends, so a crashed or stopped fine-tune resumes
    with only its unfinished runs, and adding a seed, fraction or setting runs only the new ones. Lines written
    under other training/data fields (or a torn last line) are ignored."""

    PLAN_FIELDS = {"settings", "fractions", "seeds"}  # which runs exist; each run's own key says which it is

    def __init__(self, cfg: FinetuneEvalConfig, out_dir: str | Path):
        self.path = Path(out_dir) / "runs.jsonl"
        fields = cfg.model_dump(mode="json", exclude=self.PLAN_FIELDS)
        self.config = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        self.done: dict[str, list[dict]] = {}
        text = self.path.read_text() if self.path.is_file() else ""
        self.torn_tail = bool(text) and not text.endswith("\n")  # a crash mid-write: start the next entry on a new line
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if entry.get("config") == self.config:
                self.done[self.key(entry["run"])] = entry["rows"]

    @staticmethod
    def key(run: dict) -> str:
        return json.dumps(run, sort_keys=True)

    def pending(self, runs: list[dict]) -> list[dict]:
        return [run for run in runs if self.key(run) not in self.done]

    def add(self, run: dict, rows: list[dict]) -> None:
        self.done[self.key(run)] = rows
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write("\n" * self.torn_tail + json.dumps({"config": self.config, "run": run, "rows": rows}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.torn_tail = False

    def rows(self, runs: list[dict]) -> list[dict]:
        """Every row of ``runs``, in plan order."""
        return [row for run in runs for row in self.done[self.key(run)]]


def run_finetune_eval(cfg: FinetuneEvalConfig, out_dir: str | Path, progress: bool = True):
    """Every setting x fraction x init x seed in this process; writes CSV/Markdown/PNG to OUT. Re-running
    resumes: runs already in OUT/runs.jsonl (same config) are not run again."""
    import pandas as pd
    from tqdm import tqdm

    require_files(cfg)
    runs, log = planned_runs(cfg), RunLog(cfg, out_dir)
    for run in tqdm(log.pending(runs), desc="fine-tune runs", disable=not progress):
        log.add(run, run_one(cfg, run))
    df = pd.DataFrame(log.rows(runs))
    write_results(df, out_dir)
    return df


def summarise(df):
    """Mean and std over seeds per (setting, percent, init); dg rows (``dg:<target>``) also over their splits,
    so their `seeds` count is seeds x splits."""
    g = df.groupby(["setting", "percent", "init"], sort=False)[METRIC_COLUMNS]
    mean, std = g.mean(), g.std(ddof=0).fillna(0.0)
    return mean.join(std, rsuffix="_std").reset_index().assign(seeds=g.size().values)


def to_markdown(summary) -> str:
    """Paper-style table: one row per setting/percent, one 'mAP/Rank-1' column per init (± std over seeds)."""
    inits = list(dict.fromkeys(summary["init"]))
    lines = ["| setting | p% | " + " | ".join(f"{i} mAP/R1" for i in inits) + " |",
             "|---|---:|" + "---:|" * len(inits)]
    for (setting, percent), part in summary.groupby(["setting", "percent"], sort=False):
        cells = []
        for init in inits:
            row = part[part["init"] == init]
            if row.empty:
                cells.append("–")
                continue
            r = row.iloc[0]
            spread = f" ±{100 * r['mAP_std']:.1f}" if r["seeds"] > 1 else ""
            cells.append(f"{100 * r['mAP']:.1f}{spread} / {100 * r['Rank-1']:.1f}")
        lines.append(f"| {setting} | {percent} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(df, out_dir: str | Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results_runs.csv", df.to_csv(index=False))
    summary = summarise(df)
    atomic_write_text(out / "results.csv", summary.to_csv(index=False))
    atomic_write_text(out / "results.md", to_markdown(summary))
    # a curve needs two p% points: a one-point panel or an empty one carries no information
    curves = [st for st in ("fs", "ss") if summary.loc[summary["setting"] == st, "percent"].nunique() >= 2]
    png = out / "results.png"
    if not curves:
        png.unlink(missing_ok=True)
        return {k: out / f"results.{k}" for k in ("csv", "md")}
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), squeeze=False)
    for ax, setting in zip(axes[0], curves):
        part = summary[summary["setting"] == setting]
        for init, curve in part.groupby("init", sort=False):
            ax.errorbar(curve["percent"], 100 * curve["mAP"], yerr=100 * curve["mAP_std"], marker="o", label=init,
                        capsize=3)
        ax.set(title={"fs": "few-shot (Fs): p% images per id", "ss": "small-scale (Ss): p% of ids"}[setting],
               xlabel="p (%)", ylabel="mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return {k: out / f"results.{k}" for k in ("csv", "md", "png")}
