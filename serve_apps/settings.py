"""The one config of the Serve application: where state lives, who may call it, its limits, and the build
settings (the same `BuildConfig` the batch build uses) applied to each uploaded identity."""
from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from diffreid.build import BuildConfig
from diffreid.data.sources import SourceConfig
from diffreid.config import ConfigError, StageConfig
from diffreid.models.assets import TINY_MODEL

AdapterModeOption = Literal["lora", "dreambooth"]


class ServeLimits(StageConfig):
    """Every limit is answered with a 4xx that names it."""

    min_images: int = Field(3, ge=1, description="fewer crops cannot teach an adapter an identity")
    max_images: int = Field(32, ge=1, description="an LPE sequence uses 8; more only costs upload and training")
    max_file_bytes: int = Field(2 * 1024 * 1024, ge=1024, description="a 256x128 JPEG crop is ~10 KB; 2 MiB "
                                "leaves room for large PNG crops")
    max_request_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="max_images x a generous crop")
    max_pixels: int = Field(2048 * 1024, ge=64, description="decoded width x height per image, checked before "
                            "decoding (decompression-bomb guard); person crops are far smaller")
    min_side: int = Field(16, ge=1, description="a crop with a shorter side below 16 px holds no identity to learn "
                          "(Market-1501 crops are 64 px wide, the toy world's 32)")
    formats: list[Literal["JPEG", "PNG", "WEBP", "BMP"]] = Field(
        ["JPEG", "PNG"], min_length=1, description="what PIL must decode the bytes as (the name does not count)")
    max_queued_jobs: int = Field(16, ge=1, description="jobs queued or running; beyond it uploads get 429")
    retry_after_s: int = Field(30, ge=1, description="Retry-After of a 429: about one tiny job")
    max_num_images: int = Field(512, ge=1, description="images one upload may ask for (Diff-Person: 150)")
    max_adapter_steps: int = Field(2000, ge=1, description="bounds one job's GPU time")
    max_generate_images: int = Field(64, ge=1, description="images per /generate call")
    max_name_chars: int = Field(64, ge=1, description="a label, not a document")


class JobOptions(StageConfig):
    """Per-upload options; a field left None takes the build config's value."""

    num_images: int | None = Field(None, ge=1, description="generated images (sampler.num_images)")
    adapter_mode: AdapterModeOption | None = Field(None, description="lora (fast switching) or dreambooth")
    steps: int | None = Field(None, ge=1, description="adapter training steps (adapter.steps)")
    seed: int | None = Field(None, ge=0, description="runtime seed and sampler seed_base")
    threshold: float | None = Field(None, ge=0, le=1, description="keep threshold of the deciding filter, Re-ID "
                                    "CTF by default (filter.threshold)")


def toy_build_config() -> BuildConfig:
    """The tiny toy setup: the embedded toy world as reference gallery, the tiny offline diffusion model,
    every stage shrunk to seconds on a CPU (GPU values beside each field in configs/toy.yaml)."""
    return BuildConfig.model_validate({
        "sources": [{"name": "toy", "root": None, "toyworld": {"ids_train": 8, "ids_test": 2, "cams": 4,
                                                               "height": 64, "width": 32, "seed": 0}}],
        "base_model": {"path": TINY_MODEL},
        "lpe": {"captioner": "template", "template_caption": "a person walking on the street"},
        "refset": {"num_images": 4, "steps": 2, "height": 64, "width": 32, "batch_size": 4,
                   "share_across_identities": False},
        "adapter": {"mode": "lora", "steps": 6, "lr": 1e-3, "rank": 4, "instance_batch_size": 2,
                    "prior_batch_size": 2, "height": 64, "width": 32, "checkpoint_every": 2},
        "sampler": {"num_images": 4, "steps": 2, "height": 64, "width": 32, "output_height": 64,
                    "output_width": 32, "batch_size": 8},
        "filter": {"filters": ["reid_ctf"], "threshold": 0.1},  # random tiny model: chance level of 9 ids
        "filter_reid": {"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 4, "K": 4, "epochs": 2,
                        "iters_per_epoch": 5, "warmup_epochs": 1, "milestones": [1], "pad": 3, "num_workers": 0},
        "writer": {"image_format": "png"},
    })


class ServeSettings(StageConfig):
    storage: str = Field("outputs/serve/store", description="identities' state, uploads, adapters, images: a "
                         "folder or an fsspec URL (s3://, gs://) that every replica can reach")
    scratch_dir: str = Field("", description="local working folder when storage is remote ('' = system temp)")
    assets_dir: str = Field("outputs/serve/assets", description="local: built base model, filter Re-ID model, "
                            "reference gallery cache (made once, reused)")
    token: str | None = Field(None, description="Bearer token required on every route but / (the page, which "
                              "asks for it) and /healthz; None = read token_env, and no auth when that is unset too")
    token_env: str = Field("DIFFREID_SERVE_TOKEN", description="keeps the secret out of YAML files")
    public_docs: bool = Field(True, description="/docs and /openapi.json hold no identity data")
    limits: ServeLimits = Field(default_factory=ServeLimits, description="request limits, each a clear 4xx")
    defaults: JobOptions = Field(default_factory=JobOptions, description="options an upload leaves unset")
    adapter_cache: int = Field(4, ge=1, description="adapters resident per generator replica (LRU); a LoRA "
                               "is ~72 KB on the tiny model, ~3 MB at rank 8 on SD-1.5")
    generate_batch_size: int = Field(8, ge=1, description="/generate requests merged per @serve.batch call")
    generate_batch_wait_s: float = Field(0.02, ge=0, description="wait for requests sharing an adapter")
    worker_poll_s: float = Field(1.0, gt=0, description="how often the worker looks at the queue when idle")
    max_attempts: int = Field(2, ge=1, description="a job whose worker died this many times is marked failed")
    worker_replicas: int = Field(2, ge=1, description="job workers; with two, a job whose worker dies is taken "
                                 "over once its lease lapses, without waiting for a replacement replica")
    lease_ttl_s: float = Field(60.0, gt=0, description="a job's lease lapses this long after its worker's last "
                               "renewal (every ttl/3), then another Worker replica takes the job over")
    torch_threads: int = Field(0, ge=0, description="torch threads per replica; 0 = torch's default (all cores)")
    build: BuildConfig = Field(default_factory=toy_build_config,
                               description="how each identity is built; sources[0] is the reference gallery "
                               "(rival identities for Re-ID CTF and CCTF) and the filter model's training set; "
                               "build.filter.filters: any of reid_ctf, cctf, clip, built as the build builds them")

    @model_validator(mode="after")
    def _check(self) -> "ServeSettings":
        b = self.build
        if len(b.sources) != 1:
            raise ConfigError(f"build.sources: expected exactly one reference dataset, got {len(b.sources)}")
        if b.refset.share_across_identities and b.adapter.prior_loss_weight > 0:
            raise ConfigError("build.refset.share_across_identities must be false: each uploaded identity "
                              "gets its own reference set")
        if b.adapter.mode == "shared_lora_ti":
            raise ConfigError("build.adapter.mode: shared_lora_ti trains many identities at once; "
                              "the service trains one per upload (use lora or dreambooth)")
        if "clip" in b.filter.filters and not b.filter.clip_model_dir and b.base_model.path != TINY_MODEL:
            raise ConfigError("build.filter.clip_model_dir: required when 'clip' is among build.filter.filters "
                              f"(a local CLIPModel folder; with build.base_model.path {TINY_MODEL} a tiny CLIP is "
                              "built instead)")
        if self.limits.min_images > self.limits.max_images:
            raise ConfigError("limits.min_images must be <= limits.max_images")
        return self

    @property
    def reference(self) -> SourceConfig:
        return self.build.sources[0]

    def resolved_token(self) -> str | None:
        return self.token or os.environ.get(self.token_env) or None

    @classmethod
    def toy(cls, root: str, **fields) -> "ServeSettings":
        """The tiny toy setup under ``root`` (store + assets), for a newcomer and for tests."""
        return cls(storage=f"{root}/store", assets_dir=f"{root}/assets", **fields)
