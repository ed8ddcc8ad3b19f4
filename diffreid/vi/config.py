"""The one config of the VI expansion stage (DiVE): data, modality adapter, sampling, cross-modal filter, layout."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from diffreid.config import ConfigError, RuntimeConfig, StageConfig, fill_runtime
from diffreid.data.toyworld import ToyWorldConfig
from diffreid.filtering.base import FilterConfig
from diffreid.generation.adapters.config import AdapterConfig
from diffreid.generation.prompts import LPEConfig
from diffreid.generation.sampler import SamplerConfig
from diffreid.models.pipeline import PipelineConfig
from diffreid.reid.train import ReIDTrainConfig


class ScorerConfig(StageConfig):
    """The cross-modality Re-ID model behind the filter: IR generated image vs the identity's RGB gallery."""

    model_dir: str | None = Field(None, description="an existing VI Re-ID model folder (save_reid_model); "
                                  "None = train one on both modalities of the VI dataset")
    train: ReIDTrainConfig = Field(default_factory=ReIDTrainConfig,
                                   description="BoT on RGB+IR images of the VI train ids: the shared ID head pulls "
                                   "both modalities of a person to one class, so features are cross-modal")
    evaluate: bool = Field(True, description="report the scorer's SYSU-MM01 all/indoor scores on the VI test split")
    eval_trials: int = Field(10, ge=1, description="SYSU protocol: 10 random single-shot galleries")


class RayResources(StageConfig):
    num_cpus: float = Field(1, ge=0, description="CPU cores for the expansion task")
    num_gpus: float = Field(0, ge=0, description="one GPU per expansion task on a GPU cluster")


class VIExpandConfig(StageConfig):
    """DiVE: learn modality (a shared LoRA with modality/camera words) and identity (one token per person) on a
    VI dataset plus the RGB identities to expand, then generate infrared images for those RGB-only people."""

    # 1. data
    vi_dataset: Literal["sysu_mm01", "regdb", "llcm"] = Field(
        "sysu_mm01", description="the VI dataset's reader; the output is written in its own layout, so VI "
        "trainers read the expansion as they read the original")
    vi_root: str = Field("", description="the VI dataset folder; empty = render vi_toyworld into OUT/toy/vi")
    vi_toyworld: ToyWorldConfig | None = Field(None, description="the toy VI world rendered when vi_root is empty "
                                               "(SYSU layout, cameras 3 and 6 infrared, like SYSU-MM01)")
    vi_options: dict[str, Any] = Field(default_factory=dict, description="reader options, e.g. include_val")
    rgb_dataset: str = Field("market1501", description="the RGB-only dataset whose identities are expanded")
    rgb_root: str = Field("", description="its folder; empty = render rgb_toyworld into OUT/toy/rgb")
    rgb_toyworld: ToyWorldConfig | None = Field(None, description="the toy RGB-only world rendered when rgb_root "
                                                "is empty (Market layout, other cameras)")
    rgb_options: dict[str, Any] = Field(default_factory=dict, description="reader options of the RGB dataset")
    rgb_split: Literal["train", "query", "gallery"] = Field("train", description="identities come from train")
    rgb_ids: list[int] | None = Field(None, description="source pids to expand; None = all of the split")
    max_rgb_ids: int | None = Field(None, ge=1, description="cap on expanded identities (lowest pids first)")
    max_vi_ids: int | None = Field(None, ge=1, description="cap on VI identities that teach modality; None = all")
    train_images_per_id: int = Field(16, ge=1, description="per identity and modality, evenly spread over its "
                                     "images: keeps one person from dominating the shared LoRA")
    new_pid_start: int | None = Field(None, ge=1, description="first new pid; None = the VI dataset's max id + 1")

    # 2. modality adapter and sampling
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="the base text-to-image model")
    adapter: AdapterConfig = Field(
        default_factory=lambda: AdapterConfig(mode="shared_lora_ti", prior_loss_weight=0.0),
        description="DiVE: shared LoRA = modality, one token per identity; no reference set (lambda 0)")
    prompt_template: str = Field("a {modality} photo of {token} person",
                                 description="DiVE's prompt: a modality word and the identity token")
    modality_words: dict[Literal["rgb", "ir"], str] = Field({"rgb": "visible", "ir": "infrared"},
                                                            description="words that carry the modality")
    camera_words: bool = Field(True, description="VI images also name their camera ('infrared cam3'), so "
                               "each IR camera's look can be asked for")
    lpe: LPEConfig | None = Field(None, description="None = DiVE's prompts (modality and camera words, token); "
                                  "set = each identity's LPE caption of its visible images follows them, so the "
                                  "shared LoRA can learn how described clothes read in infrared")
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(phrases_per_prompt=0),
                                   description="no attribute phrases by default: clothing words fight the "
                                   "identity token and mean little in infrared")
    ir_grey: bool = Field(True, description="an infrared camera records one channel: generated IR images are "
                          "stored as grey (3 equal channels, as SYSU-MM01/RegDB/LLCM store theirs), so no colour "
                          "survives that a real IR image could not show")
    ir_images_per_id: int = Field(20, ge=1, description="infrared images per expanded identity, spread over the "
                                  "VI dataset's IR cameras")
    rgb_images_per_id: int = Field(0, ge=0, description="optional generated visible images (the source RGB "
                                   "images are always copied)")
    ids_per_chunk: int = Field(16, ge=1, description="identities sampled together (mixed batches) and committed "
                               "together; a crash loses at most one chunk")

    # 3. filter
    filter: FilterConfig = Field(default_factory=FilterConfig, description="Re-ID CTF over the RGB gallery of "
                                 "the expanded identities, with the cross-modal scorer below")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig, description="the cross-modal Re-ID model")
    fidelity_reader: ScorerConfig | None = Field(None, description="a second cross-modality model (train it with "
                                                 "another seed, or give model_dir) that reads the generated IR "
                                                 "images: Rank-1 against the identities' visible images; None = "
                                                 "not measured (it costs one more scorer training)")
    min_kept_ir: int = Field(1, ge=0, description="an identity with fewer kept IR images is not added "
                             "(it would stay an RGB-only identity)")

    # 4. output
    link_mode: Literal["symlink", "copy"] = Field("symlink", description="how the VI dataset's own pid folders "
                                                  "enter the output; symlink costs no space")
    keep_dropped: bool = Field(True, description="write filtered-out images under dropped/ for inspection")
    jpeg_quality: int = Field(95, ge=1, le=100, description="re-encoding artefacts stay invisible")

    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig,
                                   description="applies to every part that does not set its own runtime")
    ray: RayResources = Field(default_factory=RayResources, description="resources of the Ray task (ray_jobs)")

    @model_validator(mode="after")
    def _check(self) -> "VIExpandConfig":
        if self.adapter.mode != "shared_lora_ti":
            raise ConfigError(f"adapter.mode={self.adapter.mode!r}: VI expansion needs shared_lora_ti (one "
                              "LoRA for the modality shared by all identities + one token per identity)")
        if self.adapter.prior_loss_weight > 0:
            raise ConfigError("adapter.prior_loss_weight must be 0 for VI expansion: the modality adapter has no "
                              "attribute reference set")
        for placeholder in ("{modality}", "{token}"):
            if placeholder not in self.prompt_template:
                raise ConfigError(f"prompt_template {self.prompt_template!r} must contain {placeholder}")
        try:
            self.prompt_template.format(modality="infrared", token="<id-0001>")
        except (KeyError, IndexError, ValueError) as err:
            raise ConfigError(f"prompt_template {self.prompt_template!r}: only {{modality}} and {{token}} may be "
                              f"filled in ({err!r})") from None
        if set(self.modality_words) != {"rgb", "ir"}:
            raise ConfigError("modality_words: expected a word for both 'rgb' and 'ir'")
        if self.filter.filters != ["reid_ctf"]:
            raise ConfigError(f"filter.filters={self.filter.filters}: the VI filter is the cross-modal "
                              "Re-ID CTF only (['reid_ctf'])")
        if self.vi_toyworld is not None and (self.vi_toyworld.layout != "sysu"
                                             or sorted(self.vi_toyworld.ir_cams) != [3, 6]):
            raise ConfigError("vi_toyworld: expected layout 'sysu' with ir_cams [3, 6] (the SYSU-MM01 reader "
                              "treats cameras 3 and 6 as infrared)")
        if self.rgb_toyworld is not None and self.rgb_toyworld.ir_cams:
            raise ConfigError("rgb_toyworld.ir_cams must be empty: it plays the RGB-only dataset")
        if self.vi_toyworld is not None and not self.vi_root and self.vi_dataset != "sysu_mm01":
            raise ConfigError(f"vi_dataset={self.vi_dataset!r} with an empty vi_root: the toy VI world is rendered "
                              "in SYSU-MM01's layout only; give the dataset folder or use sysu_mm01")
        parts = (self.pipeline, self.adapter, self.scorer.train)
        parts += (self.fidelity_reader.train,) if self.fidelity_reader else ()
        fill_runtime(self.runtime, parts + ((self.lpe,) if self.lpe else ()))
        return self
