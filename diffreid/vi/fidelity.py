"""How well generated infrared images keep their identity, read by a cross-modality Re-ID model that is not the
filter's: each generated IR image is a query against the expanded identities' real visible images, and it
counts as faithful when its nearest visible image belongs to its own identity (Rank-1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from diffreid.config import RuntimeConfig
from diffreid.data.types import DatasetError


def vi_fidelity(out_dir: str | Path, reader_dir: str | Path, runtime: RuntimeConfig) -> dict:
    """Rank-1 of the expansion's generated IR images (all / kept / dropped) against the source visible images
    of every expanded identity, read by the model in ``reader_dir``; ``chance`` is 1 / identities."""
    import pandas as pd

    from diffreid.filtering import model_extractor
    from diffreid.reid.metrics import compute_distmat

    out = Path(out_dir)
    manifest = out / "manifest.parquet"
    if not manifest.is_file():
        raise DatasetError(f"{manifest} is missing: run the VI expansion first")
    df = pd.read_parquet(manifest)
    sources = df[df["origin"] == "source"].drop_duplicates("source_path")
    generated = df[(df["origin"] == "generated") & (df["modality"] == "ir") & (df["file"] != "")]
    if sources.empty or generated.empty:
        raise DatasetError(f"{manifest}: fidelity needs source images and written generated IR images "
                           f"({len(sources)} sources, {len(generated)} IR images on disk; keep_dropped writes "
                           "the dropped ones too)")
    extract = model_extractor(reader_dir, runtime)
    gallery = extract(sources["source_path"].tolist())
    query = extract([str(out / f) for f in generated["file"]])
    nearest = compute_distmat(query, gallery, "cosine").argmin(axis=1)
    hit = sources["pid"].to_numpy()[nearest] == generated["pid"].to_numpy()
    kept = generated["kept"].to_numpy().astype(bool)

    def rate(mask):
        return float(hit[mask].mean()) if mask.any() else float("nan")

    return {"ir_images": int(len(generated)), "kept": int(kept.sum()), "kept_fraction": float(kept.mean()),
            "rank1_all": rate(np.ones_like(kept)), "rank1_kept": rate(kept), "rank1_dropped": rate(~kept),
            "identities": int(sources["pid"].nunique()), "chance": 1.0 / sources["pid"].nunique()}
