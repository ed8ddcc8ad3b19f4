"""The one config of the identity-adapter stage (all three modes)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from diffreid.config import ConfigError, RuntimeConfig, StageConfig

AdapterMode = Literal["lora", "dreambooth", "shared_lora_ti"]

# Per-mode defaults for fields left at None. DreamBooth: the paper's recipe (lr 2e-6, 1000 steps) - a full
# UNet fine-tune needs a tiny lr or it forgets the prior. LoRA: the low-rank update starts at zero and has few
# parameters, so it needs a ~50x larger lr (1e-4 is the diffusers DreamBooth-LoRA default) and fewer steps.
# shared_lora_ti: one LoRA over many identities sees each identity less often, so more steps.
MODE_DEFAULTS = {
    "lora": {"lr": 1e-4, "steps": 500},
    "dreambooth": {"lr": 2e-6, "steps": 1000},
    "shared_lora_ti": {"lr": 1e-4, "steps": 2000},
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def check_person_aspect(height: int, width: int, enforce: bool, prefix: str = "") -> None:
    if enforce and height != 2 * width:
        raise ConfigError(f"{prefix}height/{prefix}width = {height}x{width}: expected the 2:1 Re-ID person aspect "
                          f"(height = 2 x width, e.g. 512x256); set {prefix}enforce_person_aspect=false to allow "
                          "another shape (the paper trained square 512x512)")


def check_resolution(pipe, height: int, width: int, prefix: str = "") -> None:
    """Height/width must survive the VAE downscale and every UNet downsampling without rounding."""
    levels = len(pipe.unet.config.block_out_channels) - 1
    multiple = pipe.vae_scale_factor * 2 ** levels
    for field, value in ((f"{prefix}height", height), (f"{prefix}width", width)):
        if value % multiple:
            raise ConfigError(f"{field}={value}: must be divisible by {multiple} (VAE scale factor "
                              f"{pipe.vae_scale_factor} x 2^{levels} UNet downsamplings) for this pipeline")


class AdapterConfig(StageConfig):
    """How one identity adapter (or one shared adapter for many identities) is trained."""

    mode: AdapterMode = Field("lora", description="lora: small per-ID file, fast switching; dreambooth: the "
                                                  "paper's full fine-tune; shared_lora_ti: DiVE, one run for many IDs")
    rank: int = Field(8, ge=1, description="LoRA rank: 4-16 is the usual range for one subject")
    alpha: float = Field(8.0, gt=0, description="LoRA alpha = rank keeps the update scale at 1")
    target_modules: list[str] = Field(default_factory=lambda: list(LORA_TARGETS),
                                      description="UNet attention projections, the diffusers DreamBooth-LoRA choice")
    train_text_encoder: bool = Field(False, description="text-encoder LoRA helps the IIR token bind, costs memory")
    text_target_modules: list[str] = Field(default_factory=lambda: list(TEXT_LORA_TARGETS),
                                           description="CLIP attention projections for the text-encoder LoRA")
    lr: float | None = Field(None, gt=0, description="None = per-mode default (MODE_DEFAULTS, reasons there)")
    embedding_lr: float = Field(5e-3, gt=0, description="textual-inversion rows learn from scratch: a high lr")
    token_template: str = Field("<id-{pid:04d}>", description="shared_lora_ti: one new token per pid, not a word")
    token_init_word: str = Field("person", description="new token rows start at this word's embedding")
    steps: int | None = Field(None, ge=1, description="None = per-mode default (paper DreamBooth: 1000)")
    instance_batch_size: int = Field(4, ge=1, description="identity images per step")
    prior_batch_size: int = Field(4, ge=1, description="attribute-reference images per step (DreamBooth uses 1:1)")
    prior_loss_weight: float = Field(1.0, ge=0, description="lambda of eq. 1; 1.0 as in DreamBooth")
    weighting: Literal["uniform", "snr"] = Field("uniform", description="uniform = w_t 1 (eq. 1 as written); "
                                                                         "snr = min-SNR-gamma, faster convergence")
    snr_gamma: float = Field(5.0, gt=0, description="min-SNR gamma; 5 is the value of its paper")
    max_grad_norm: float = Field(1.0, gt=0, description="clip exploding steps on tiny identity sets")
    height: int = Field(512, ge=8, description="2:1 person aspect at SD-1.x's native 512 (tests: 64)")
    width: int = Field(256, ge=8, description="2:1 person aspect (tests: 32)")
    enforce_person_aspect: bool = Field(True, description="Re-ID crops are 2:1; false allows the paper's square")
    dreambooth_store: Literal["unet", "lora"] = Field(
        "unet", description="dreambooth: keep the full UNet (the paper; 1.7 GB per SD-1.5 identity in fp16) or its "
        "weight delta as a rank-extract_rank LoRA (MB; loads and switches like any LoRA)")
    extract_rank: int = Field(64, ge=1, description="SVD rank of the stored delta (docs/identity-fidelity.md: "
                                                    "fidelity against rank on the toy world)")
    checkpoint_every: int = Field(100, ge=1, description="resume loses at most this many steps")
    optimizer: Literal["adamw", "adamw8bit"] = Field(
        "adamw", description="adamw8bit (bitsandbytes) keeps Adam's moments in 8 bits: 6 GB less for a DreamBooth UNet")
    gradient_checkpointing: bool = Field(False, description="trade ~30% time for much less activation memory")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig,
                                   description="runtime.seed seeds training; fp16/bf16 autocast only on cuda")

    @model_validator(mode="after")
    def _check(self) -> "AdapterConfig":
        check_person_aspect(self.height, self.width, self.enforce_person_aspect)
        if not self.target_modules:
            raise ConfigError("target_modules is empty: name at least one UNet projection (e.g. to_q)")
        if "{pid" not in self.token_template:
            raise ConfigError(f"token_template {self.token_template!r}: must contain {{pid}} (e.g. '<id-{{pid:04d}}>')")
        return self

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else MODE_DEFAULTS[self.mode]["lr"]

    @property
    def resolved_steps(self) -> int:
        return self.steps if self.steps is not None else MODE_DEFAULTS[self.mode]["steps"]

    def token(self, pid: int) -> str:
        return self.token_template.format(pid=pid)
