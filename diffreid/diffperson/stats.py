"""Numbers and plots of a Diff-Person folder: summary stats, the identity-distribution curve (paper Fig. 5),
per-filter score histograms (kept vs dropped) and per-identity sample grids."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diffreid.diffperson.manifest import read_identities, read_manifest
from diffreid.diffperson.writer import META
from diffreid.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_columns(df) -> list[str]:
    return [c for c in df.columns if c.startswith("score_")]


def stats(root: str | Path) -> dict[str, Any]:
    """Plain-data summary: kept images and identities (what a Re-ID trainer sees), dropped images, images per
    identity, per source dataset and per filter (mean score of kept vs dropped)."""
    df = read_manifest(root)
    kept = df["kept"].astype(bool)
    generated = df["origin"] == "generated"
    per_id = df[kept].groupby("pid").size()
    counts = {int(pid): int(n) for pid, n in per_id.items()}
    values = np.array(list(counts.values()) or [0])
    by_source = {}
    for ds, g in df.groupby("source_dataset"):
        gk = g["kept"].astype(bool)
        by_source[str(ds)] = {"identities": int(g.loc[gk, "pid"].nunique()), "images": int(gk.sum()),
                              "dropped": int((~gk).sum())}
    filters = {}
    for col in score_columns(df):
        s = df[col].astype(float)
        filters[col.removeprefix("score_")] = {
            "kept_mean": float(s[kept].mean()) if kept.any() else float("nan"),
            "dropped_mean": float(s[~kept].mean()) if (~kept).any() else float("nan"),
            "min": float(s.min()), "max": float(s.max()),
        }
    n_generated = int(generated.sum())
    return {
        "images": int(kept.sum()),
        "identities": len(counts),
        "generated": n_generated,
        "generated_kept": int((kept & generated).sum()),
        "dropped": int((~kept).sum()),
        "source_copied": int((~generated).sum()),
        "keep_rate": float((kept & generated).sum() / n_generated) if n_generated else float("nan"),
        "images_per_identity": {"min": int(values.min()), "median": float(np.median(values)),
                                "mean": float(values.mean()), "max": int(values.max())},
        "by_source": by_source,
        "filters": filters,
        "counts": counts,
        "generated_counts": {int(p): int(n) for p, n in df[generated].groupby("pid").size().items()},
    }


def format_stats(s: dict[str, Any], root: str | Path = "") -> str:
    ipi = s["images_per_identity"]
    lines = [
        f"Diff-Person {root}".rstrip(),
        f"  {'images (kept)':<22}{s['images']:>10}",
        f"  {'identities':<22}{s['identities']:>10}",
        f"  {'generated':<22}{s['generated']:>10}",
        f"  {'dropped by filter':<22}{s['dropped']:>10}",
        f"  {'copied source images':<22}{s['source_copied']:>10}",
        f"  {'keep rate':<22}{s['keep_rate'] * 100:>9.1f}%",
        f"  {'images / identity':<22}min {ipi['min']}  median {ipi['median']:g}  "
        f"mean {ipi['mean']:.1f}  max {ipi['max']}",
        f"  {'source dataset':<22}{'ids':>8}{'images':>10}{'dropped':>10}",
    ]
    for ds, v in s["by_source"].items():
        lines.append(f"  {ds:<22}{v['identities']:>8}{v['images']:>10}{v['dropped']:>10}")
    for name, v in s["filters"].items():
        lines.append(f"  score_{name:<16}kept mean {v['kept_mean']:.3f}  dropped mean {v['dropped_mean']:.3f}")
    return "\n".join(lines)


def identity_distribution(counts: Sequence[int], xs: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paper Fig. 5: for each X, the percentage of identities that have fewer than X images."""
    c = np.sort(np.asarray(counts, dtype=np.int64))
    if xs is None:
        xs = np.arange(0, (int(c.max()) if len(c) else 0) + 2)
    xs = np.asarray(xs, dtype=np.int64)
    ys = 100.0 * np.searchsorted(c, xs, side="left") / max(len(c), 1)
    return xs, ys


def identity_distribution_plot(counts: Sequence[int] | Mapping[str, Sequence[int]], path: str | Path,
                               title: str = "Identity distribution") -> Path:
    """Cumulative % of identities with fewer than X images, one curve per named series, as a PNG."""
    plt = _plt()
    series = counts if isinstance(counts, Mapping) else {"Diff-Person": counts}
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=110)
    for name, values in series.items():
        if len(values):
            xs, ys = identity_distribution(values)
            ax.step(xs, ys, where="post", label=f"{name} ({len(values)} ids)")
    ax.set_xlabel("X (images per identity)")
    ax.set_ylabel("% of identities with < X images")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    if ax.lines:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def score_histograms(df, out_dir: str | Path, thresholds: Mapping[str, float] | None = None) -> list[Path]:
    """One PNG per filter: score histogram of kept vs dropped generated images (threshold line if known)."""
    plt = _plt()
    paths = []
    kept = df["kept"].astype(bool)
    for col in score_columns(df):
        name = col.removeprefix("score_")
        s = df[col].astype(float)
        valid = s.notna()
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
        finite = s[valid]
        bins = np.linspace(float(finite.min()), float(finite.max()) + 1e-9, 31) if len(finite) else 10
        for mask, label, color in ((kept, "kept", "tab:green"), (~kept, "dropped", "tab:red")):
            vals = s[mask & valid]
            if len(vals):
                ax.hist(vals, bins=bins, alpha=0.6, label=f"{label} ({len(vals)})", color=color)
        if thresholds and name in thresholds:
            ax.axvline(thresholds[name], color="black", linestyle="--", label=f"threshold {thresholds[name]:g}")
        ax.set_xlabel(f"score_{name}")
        ax.set_ylabel("images")
        ax.legend(fontsize=8)
        ax.set_title(f"Filter scores: {name}")
        fig.tight_layout()
        paths.append(_save(fig, Path(out_dir) / f"scores_{name}.png"))
    return paths


def _open(image: Any):
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    return image.convert("RGB")


def sample_grid(source_images: Sequence[Any], kept: Sequence[tuple[Any, Mapping[str, float]]],
                dropped: Sequence[tuple[Any, Mapping[str, float]]], path: str | Path, title: str = "",
                totals: Mapping[str, int] | None = None, tile_height: int = 128) -> Path:
    """Three rows: source images, kept generated images, dropped generated images (scores under each).
    Images are PIL images or paths; ``kept``/``dropped`` are (image, {filter: score}) pairs; ``totals``
    (row name → count) labels rows whose images are a sample of more."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    line, pad, label_w, title_h = 13, 6, 76, 22
    rows = [("source", [(im, {}) for im in source_images]), ("kept", list(kept)), ("dropped", list(dropped))]
    tiles = [[(_open(im), scores) for im, scores in items] for _, items in rows]
    tile_w = max([round(im.width * tile_height / im.height) for row in tiles for im, _ in row] or [tile_height // 2])
    ncols = max(1, *(len(row) for row in tiles))
    texts = [f"{k} {v:.2f}" for row in tiles for _, scores in row for k, v in scores.items()]
    col_w = max([tile_w] + [round(font.getlength(t)) for t in texts]) + pad
    text_h = [max([len(scores) for _, scores in row] or [0]) * line for row in tiles]
    height = title_h + sum(tile_height + t + 2 * pad for t in text_h)
    canvas = Image.new("RGB", (label_w + ncols * col_w + pad, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 4), title, fill="black", font=font)
    y = title_h
    for (name, items), row, t_h in zip(rows, tiles, text_h):
        total = (totals or {}).get(name, len(items))
        shown = f"{len(items)} of {total}" if total != len(items) else str(total)
        draw.text((pad, y + tile_height // 2 - line), f"{name}\n{shown}", fill="black", font=font)
        for c, (im, scores) in enumerate(row):
            x = label_w + c * col_w
            resample = Image.NEAREST if im.height < tile_height else Image.BILINEAR
            canvas.paste(im.resize((tile_w, tile_height), resample), (x, y))
            for k, (fname, value) in enumerate(scores.items()):
                draw.text((x, y + tile_height + 2 + k * line), f"{fname} {value:.2f}", fill="#333", font=font)
        y += tile_height + t_h + 2 * pad
        draw.line([(pad, y - pad // 2), (canvas.width - pad, y - pad // 2)], fill="#ddd")
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return Path(path)


def _pick(root: Path, frame, cols: list[str], n: int) -> list[tuple[Path, dict[str, float]]]:
    """The ``n`` written images of ``frame`` with the highest score, each with that one score (``cols[0]``)."""
    frame = frame[frame["file"] != ""].sort_values(cols[:1] or ["index"], ascending=False, kind="stable").head(n)
    return [(root / row["file"], {c.removeprefix("score_"): float(row[c]) for c in cols[:1]})
            for _, row in frame.iterrows()]


def identity_grids(root: str | Path, out_dir: str | Path, max_identities: int = 8,
                   per_row: int = 8) -> list[Path]:
    """Sample grids for the first ``max_identities`` pids: source images (when their paths still exist, else
    copied source images), kept images with the highest scores and dropped images with the highest scores
    (the near misses)."""
    root = Path(root)
    df = read_manifest(root)
    sources = {int(i["pid"]): i.get("source_images", []) for i in read_identities(root)}
    cols = score_columns(df)
    paths = []
    for pid in sorted(df["pid"].unique())[:max_identities]:
        g = df[df["pid"] == pid]
        gen = g[g["origin"] == "generated"]
        src = [p for p in sources.get(int(pid), []) if Path(p).is_file()][:per_row]
        if not src:
            src = [root / f for f in g.loc[g["origin"] == "source", "file"]][:per_row]
        keep = gen["kept"].astype(bool)
        ds, spid = g.iloc[0]["source_dataset"], g.iloc[0]["source_pid"]
        paths.append(sample_grid(src, _pick(root, gen[keep], cols, per_row), _pick(root, gen[~keep], cols, per_row),
                                 Path(out_dir) / f"grid_{int(pid):04d}.png", title=f"pid {int(pid)}  ({ds} pid {spid})",
                                 totals={"kept": int(keep.sum()), "dropped": int((~keep).sum())}))
    return paths


def write_plots(root: str | Path, out_dir: str | Path, max_identities: int = 8) -> dict[str, Any]:
    """All plots of a folder into ``out_dir``; returns the stats and the written paths."""
    root, out_dir = Path(root), Path(out_dir)
    s = stats(root)
    meta = json.loads((root / META).read_text())
    df = read_manifest(root)
    kept, generated = list(s["counts"].values()), list(s["generated_counts"].values())
    # every identity with the same count draws one step: a curve only when the counts differ
    curve = None
    if len(set(kept)) > 1 or len(set(generated)) > 1:
        curve = identity_distribution_plot({"Diff-Person (kept)": kept, "generated (before filter)": generated},
                                           out_dir / "identity_distribution.png")
    return {
        "stats": s,
        "identity_distribution": curve,
        "histograms": score_histograms(df, out_dir, meta.get("filter_thresholds")),
        "grids": identity_grids(root, out_dir, max_identities=max_identities),
    }
