"""The filtering stage's config, result type and one call shared by all filters (paper §3.2).

Every filter answers the same question for a batch of generated images and the pid each was generated
for: ``score(images, claimed_pids) -> FilterScores`` with scores in [0, 1] and a keep flag from the
filter's threshold. ``score_all`` runs every enabled filter so the manifest keeps all their scores (and
extra columns such as the Re-ID margin): a threshold can then be changed without regenerating.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image
from pydantic import Field, field_validator

from diffreid.config import StageConfig
from diffreid.errors import DiffreidError

FilterName = Literal["reid_ctf", "cctf", "clip"]
ReIDConfidence = Literal["softmax", "margin", "similarity"]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]


class FilterError(DiffreidError, ValueError):
    """Bad input to a filter (length mismatch, a pid the filter has never seen, missing model folder)."""


class FilterConfig(StageConfig):
    filters: list[FilterName] = Field(
        ["reid_ctf"], min_length=1,
        description="the paper keeps Re-ID CTF; add cctf/clip to store their scores for comparison")
    decide_by: FilterName = Field("reid_ctf", validate_default=True,
                                  description="the paper's choice: Re-ID CTF decides keep/drop")
    threshold: Unit = Field(0.5, description="softmax confidence 0.5 = the claimed id is more likely than all "
                            "rivals together; applies to every filter not named in `thresholds`")
    thresholds: dict[FilterName, Unit] = Field(
        {}, description="per-filter overrides of `threshold` (each filter's scale differs)")

    # Re-ID CTF
    reid_confidence: ReIDConfidence = Field(
        "softmax", description="softmax: P(claimed id) over per-identity max similarities (accounts for "
        "confusion with every near id); margin: sigmoid((own - best other)/temperature), only the "
        "nearest rival counts; similarity: own-id max cosine clipped to [0, 1], for single-id galleries")
    temperature: float = Field(0.05, gt=0, description="cosine gaps of ~0.1 between ids then give odds "
                               "of e^2; smaller = harsher")
    search_k: int = Field(256, ge=1, description="neighbours searched for rival identities; exact when >= "
                          "gallery size, otherwise rivals outside the top-k are ignored")
    min_similarity: float | Literal["auto"] | None = Field(
        None, description="Re-ID CTF keeps nothing less like its claimed identity than this (cosine); auto: the "
        "5th percentile of real images' similarity to their identity's nearest other image. None (the paper): a "
        "toy-world probe cut 49% of genuine crops at auto while 5% of noise images passed")
    index_type: Literal["flat_ip", "ivf", "hnsw"] = Field(
        "flat_ip", description="exact inner product; ivf/hnsw only pay off for galleries of ~1e5+ images")
    ivf_nlist: int = Field(100, ge=1, description="~sqrt(gallery size) lists; capped so each has ~39 points")
    ivf_nprobe: int = Field(10, ge=1, description="10% of lists probed keeps recall high")
    hnsw_m: int = Field(32, ge=4, description="FAISS's usual graph degree for recall >0.95")
    hnsw_ef_search: int = Field(128, ge=1, description="raised to search_k automatically when smaller")
    use_gpu: bool = Field(True, description="the index goes to GPU only when faiss sees one (HNSW stays on CPU)")

    # model folders (None: the filter cannot be built unless enabled filters do not need it)
    reid_model_dir: str | None = Field(None, description="folder written by save_reid_model for the source dataset")
    cctf_model_dir: str | None = Field(None, description="feature extractor of the CCTF classifier; None = "
                                       "the Re-ID model (its features, a separate linear head)")
    cctf_weight_decay: float = Field(1e-4, ge=0, description="light L2 on the linear head: source ids are "
                                     "separable, the decay keeps probabilities finite")
    cctf_steps: int = Field(100, ge=1, description="L-BFGS iterations; converges well before on ~1e4 images")
    clip_model_dir: str | None = Field(None, description="local CLIPModel + CLIPProcessor folder (from_pretrained)")
    clip_positive_prompts: list[str] = Field(["a photo of a person"], min_length=1,
                                             description="the paper's CLIP filter keeps images of a person")
    clip_negative_prompts: list[str] = Field(
        ["a photo of an empty street", "a photo of a building", "random noise", "a blurry abstract pattern"],
        min_length=1, description="typical failure modes of a generator: missing subject, noise")
    clip_pad_square: bool = Field(True, description="pad 2:1 crops to square so CLIP's centre crop keeps the whole person")
    gallery_dir: str | None = Field(None, description="where the gallery and CCTF head are cached; None = "
                                    "the caller's output folder decides")
    batch_size: int = Field(64, ge=1, description="feature-extraction batch; fits a 2:1 256x128 R50 in 2 GB")

    @field_validator("decide_by")
    @classmethod
    def decide_by_is_enabled(cls, value: str, info) -> str:
        enabled = info.data.get("filters")
        if enabled is not None and value not in enabled:
            raise ValueError(f"decide_by {value!r} is not among the enabled filters {enabled}")
        return value

    def threshold_of(self, name: str) -> float:
        return float(self.thresholds.get(name, self.threshold))


@dataclass
class FilterScores:
    """One filter's answer for a batch: ``scores`` float32 in [0, 1], ``keep`` = scores >= threshold, and
    ``extras``: named per-image columns worth keeping (e.g. the Re-ID margin)."""

    scores: np.ndarray
    keep: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_scores(cls, scores: np.ndarray, threshold: float,
                    extras: dict[str, np.ndarray] | None = None) -> "FilterScores":
        scores = np.clip(np.asarray(scores, dtype=np.float32), 0.0, 1.0)
        return cls(scores=scores, keep=scores >= threshold, extras=extras or {})


@runtime_checkable
class ImageFilter(Protocol):
    name: str
    threshold: float

    def score(self, images: Sequence[Image.Image], claimed_pids: Sequence[int]) -> FilterScores: ...


def model_key(model_dir: str | Path) -> str:
    """Identifies a saved model by its resolved folder and its files' sizes and mtimes."""
    folder = Path(model_dir).resolve()
    h = hashlib.sha256(str(folder).encode())
    for f in sorted(folder.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def check_batch(images: Sequence[Image.Image], claimed_pids: Sequence[int]) -> np.ndarray:
    pids = np.asarray(claimed_pids, dtype=np.int64).reshape(-1)
    if len(images) != len(pids):
        raise FilterError(f"got {len(images)} images but {len(pids)} claimed pids (one pid per image expected)")
    return pids


def score_all(filters: dict[str, ImageFilter], images: Sequence[Image.Image],
              claimed_pids: Sequence[int]) -> dict[str, np.ndarray]:
    """Every filter's scores: ``{name: scores, name_keep: keep, name_<extra>: column}``; the writer stores
    each as a ``score_<key>`` manifest column."""
    out: dict[str, np.ndarray] = {}
    for name, flt in filters.items():
        result = flt.score(images, claimed_pids)
        out[name] = result.scores
        out[f"{name}_keep"] = result.keep
        for extra, column in result.extras.items():
            out[f"{name}_{extra}"] = column
    return out


def decide(scores: dict[str, np.ndarray], cfg: FilterConfig) -> np.ndarray:
    """The keep flag: the deciding filter's score against its threshold."""
    if cfg.decide_by not in scores:
        raise FilterError(f"decide_by {cfg.decide_by!r}: no scores for it (have {sorted(scores)})")
    return np.asarray(scores[cfg.decide_by]) >= cfg.threshold_of(cfg.decide_by)
