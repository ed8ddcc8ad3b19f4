"""The toy base text-to-image model: a tiny SD-1.x pipeline trained on toy-world pedestrians.

The analogue of web-scale text-image pre-training: a pool of toy-world identities disjoint from every
evaluation identity (pids from ``pid_offset``), seen by many cameras, each image captioned from its true
attributes in the same words LPE prompts use. Recipe (from a CPU feasibility probe; measurements in
docs/identity-fidelity.md): train the VAE first, cache latents, then train the UNet (cross-attention only at the
low-resolution level) together with a small CLIP text encoder over a word-level vocabulary. Everything is seeded and runs on CPU; the result is a
plain diffusers folder that loads through ``StableDiffusionPipeline.from_pretrained``.
"""
from __future__ import annotations

import json
import math
import shutil
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from diffreid.config import StageConfig
from diffreid.data.toyworld import VIEWS, Identity, describe, make_camera, render_person, sample_identity
from diffreid.generation.prompts import merge_captions
from diffreid.io import atomic_dir, atomic_path, atomic_write_json

IDENTITY_TOKENS = ("sks", "xjq", "zwv", "qlt")  # rare words kept as single, untrained tokens for identity prompts
TEMPLATE_WORDS = ("a", "photo", "of", "person", "seen", "from", "the")


class ToyPoolConfig(StageConfig):
    """The training pool: identities no evaluation world uses, seen by many scenes."""

    pid_offset: int = Field(5000, description="evaluation worlds use pids below 5000")
    ids: int = Field(2000, ge=1, description="2,000 people x 8 images: varied enough to generalise to new people")
    images_per_id: int = Field(8, ge=1, description="several cameras and views per person")
    cameras: int = Field(16, ge=1, description="scenes per camera seed (indices 1..cameras)")
    camera_seeds: list[int] = Field(default_factory=lambda: [0, 1], description="seed 0 scenes are the "
                                    "default worlds' look (street scenes on the web); seed 1 adds others")
    height: int = Field(64, description="the demo's 64x32 resolution")
    width: int = Field(32, description="2:1 person aspect")
    seed: int = Field(12345, description="pool identities and frames derive from it")
    uniform_colours: bool = Field(False, description="every clothing colour equally often (True) or the evaluation "
                                                     "worlds' crowd frequencies, where red/yellow/green are rare")
    nuisance: float = Field(1.0, ge=0, le=2, description="camera cast/blur/gain strength (make_camera): 1 = the "
                                                         "evaluation worlds' cameras; lower shows clothing plainer")


class PromptFollowingConfig(StageConfig):
    """How the finished model's prompt following is measured (by the toy captioner)."""

    per_prompt: int = Field(12, ge=1, description="6 colour pairs x 12 = 72 samples")
    steps: int = Field(20, ge=1, description="the demo sampler's DDIM steps")
    guidance: float = Field(7.0, ge=1, description="the demo sampler's guidance")
    seed: int = Field(0, description="sample seeds derive from it")


class RefinePhase(StageConfig):
    """Second UNet + text-encoder phase: a fresh optimiser from the first phase's EMA weights, min-SNR loss."""

    steps: int = Field(1200, ge=1, description="~40 min on 2 cores at batch 64")
    lr: float = Field(3e-4, gt=0, description="half the first phase's peak: the weights are already trained")
    warmup_steps: int = Field(50, ge=0, description="a fresh AdamW needs a few steps to estimate its moments")
    snr_gamma: float | None = Field(5.0, gt=0, description="min-SNR-gamma loss weights (Hang et al. 2023, gamma 5): "
                                                           "more weight on the noisy steps that set colour and layout")
    ema_decay: float = Field(0.995, ge=0, lt=1, description="an EMA over ~200 steps: less lag than the first phase's")
    pool: ToyPoolConfig = Field(default_factory=lambda: ToyPoolConfig(seed=23456, uniform_colours=True),
                                description="new pool people, every colour equally often: the crowd-frequency "
                                            "pool left rare colours (yellow, green) unlearnt")


class ToyBaseConfig(StageConfig):
    """Architecture and training recipe of the toy base model (defaults: ~1 h on 2 CPU cores)."""

    pool: ToyPoolConfig = Field(default_factory=ToyPoolConfig, description="VAE (and captioner) training images")
    unet_pool: ToyPoolConfig | None = Field(None, description="UNet + text-encoder images; None: `pool` (the "
                                                          "shipped base). configs/toy-models-next.yaml tries a pool "
                                                          "with every colour equally often")
    vae_channels: list[int] = Field(default_factory=lambda: [32, 64], description="2 blocks: latents 4x32x16")
    vae_steps: int = Field(600, ge=0, description="~5 min on 2 cores; reconstruction MSE ~0.03 (in [-1,1])")
    vae_batch: int = Field(32, ge=1, description="small images: 32 per step is plenty")
    vae_lr: float = Field(1e-3, gt=0, description="AdamW; a small conv VAE tolerates a high rate")
    kl_weight: float = Field(1e-6, ge=0, description="SD's tiny KL term: latents stay close to the encoder mean")
    unet_channels: list[int] = Field(default_factory=lambda: [64, 128], description="~3.9 M parameters")
    text_hidden: int = Field(64, description="CLIP text width = UNet cross-attention width (the shipped base)")
    text_layers: int = Field(2, description="captions are short attribute lists (the shipped base)")
    text_time_embedding: bool = Field(False, description="add an attention-pooled caption embedding to the time "
                                                         "embedding, so the 32x16 resnets see the colours (3.3 vs "
                                                         "2.9 s/step); off: with it the shipped recipe drew shirts "
                                                         "42% / trousers 39% vs 86% / 42%")
    train_text_encoder: bool = Field(True, description="False keeps the text encoder at its seeded random weights: "
                                                       "the jointly trained one of the shipped base maps 'red shirt' "
                                                       "and 'blue shirt' to outputs only ~10% apart")
    unet_steps: int = Field(1200, ge=0, description="~40-60 min at batch 64 on 2 cores")
    snr_gamma: float | None = Field(None, gt=0, description="min-SNR-gamma loss weights (Hang et al. 2023); None: "
                                                            "the plain noise loss of the shipped base")
    person_weight: float = Field(5.0, ge=0, description="extra noise-loss weight on the person's latent pixels "
                                                        "(1 + w x person share; the person is ~24% of a crop): "
                                                        "shirt colour 92% at step 900 vs ~30% with the plain loss (0)")
    lower_weight: float = Field(0.0, ge=0, description="further weight on the lower half of the person (the "
                                                       "trousers/skirt/shorts, a small part of the mask); 0: the "
                                                       "shipped base's first phase")
    vae_from: str | None = Field(None, description="a toy-base folder whose trained VAE is reused (skips the "
                                                   "~15-min VAE phase); None trains one on `pool`")
    unet_batch: int = Field(64, ge=1, description="probe: batch size mattered more than step count")
    unet_lr: float = Field(6e-4, gt=0, description="peak AdamW rate after warm-up, cosine-decayed to 10%")
    warmup_steps: int = Field(100, ge=0, description="stabilises the first steps of a fresh UNet")
    ema_decay: float = Field(0.998, ge=0, lt=1, description="the shipped weights are an EMA over ~500 steps")
    uncond_prob: float = Field(0.1, ge=0, le=1, description="caption dropout, so classifier-free guidance works")
    view_prob: float = Field(0.5, ge=0, le=1, description="how often the caption names the view")
    checkpoint_every: int = Field(100, ge=1, description="steps between resumable checkpoints (~5 min)")
    sample_every: int = Field(300, ge=1, description="steps between sample grids and a quick prompt-following "
                                                     "check (24 samples) in log.jsonl: progress you can see")
    eval: PromptFollowingConfig = Field(default_factory=PromptFollowingConfig,
                                        description="prompt following of the result, at the demo's settings")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = all cores")
    seed: int = Field(0, description="weights, batches and noise derive from it")
    refine: RefinePhase | None = Field(None, description="a second phase from the first phase's EMA weights; off: "
                                             "500 refine steps from the shipped weights left prompt following "
                                             "flat (shirt 32% -> 33%, trousers 17% -> 21%)")
    init_from: str | None = Field(None, description="a finished toy-base folder: skip the VAE and first UNet "
                                                    "phase and run only `refine` from its weights (continue training)")

    @model_validator(mode="after")
    def _init_needs_refine(self):
        if self.init_from is not None and self.refine is None:
            raise ValueError("init_from is set but refine is None: nothing would be trained")
        return self


# ----------------------------------------------------------------------------------------------------------
# captions and vocabulary
# ----------------------------------------------------------------------------------------------------------
def training_caption(identity: Identity, view: str | None) -> str:
    """The caption a training image gets: the LPE reference-prompt form of its true description."""
    return "a photo of person, " + merge_captions([describe(identity, view)], max_phrases=8)


def caption_words(samples: int = 3000, seed: int = 0) -> list[str]:
    """Every word toy captions and prompts use, in first-seen order (each becomes one token)."""
    import re

    rng = np.random.default_rng(seed)
    words: dict[str, None] = dict.fromkeys(IDENTITY_TOKENS + TEMPLATE_WORDS)
    for k in range(samples):
        ident = sample_identity(rng, k)
        for view in (None, *VIEWS):
            for w in re.findall(r"[a-z]+", describe(ident, view).lower()):
                words.setdefault(w)
    return list(words)


# ----------------------------------------------------------------------------------------------------------
# the pool
# ----------------------------------------------------------------------------------------------------------
def pool_identities(cfg: ToyPoolConfig) -> list[Identity]:
    return [sample_identity(np.random.default_rng([cfg.seed, pid]), pid, uniform_colours=cfg.uniform_colours)
            for pid in range(cfg.pid_offset + 1, cfg.pid_offset + 1 + cfg.ids)]


def render_pool(cfg: ToyPoolConfig, progress: bool = True, with_masks: bool = False):
    """(images uint8 N x H x W x 3, identities, views): ``images_per_id`` crops per pool identity.
    ``with_masks`` appends the person masks (bool N x H x W); the images are the same either way."""
    from tqdm import tqdm

    cams = [make_camera(i, s, cfg.nuisance) for s in cfg.camera_seeds for i in range(1, cfg.cameras + 1)]
    people = pool_identities(cfg)
    images, owners, views, masks = [], [], [], []
    for ident in tqdm(people, desc="toy pool", unit="id", disable=not progress):
        rng = np.random.default_rng([cfg.seed, 7, ident.pid])
        for _ in range(cfg.images_per_id):
            cam = cams[int(rng.integers(len(cams)))]
            view = VIEWS[int(rng.integers(3))]
            image, mask = render_person(ident, cam, view, rng, cfg.height, cfg.width, with_mask=True)
            images.append(np.asarray(image))
            masks.append(mask)
            owners.append(ident)
            views.append(view)
    return (np.stack(images), owners, views) + ((np.stack(masks),) if with_masks else ())


def lower_half(masks: np.ndarray) -> np.ndarray:
    """The part of each person mask below the middle of its vertical extent: legs and lower garment."""
    rows = np.arange(masks.shape[1])[None, :, None]
    any_row = masks.any(axis=2)
    top = np.where(any_row.any(axis=1), any_row.argmax(axis=1), masks.shape[1])
    bottom = masks.shape[1] - 1 - any_row[:, ::-1].argmax(axis=1)
    return masks & (rows >= ((top + bottom + 1) / 2)[:, None, None])


def latent_weights(masks: np.ndarray, factor: int, person_weight: float, lower_weight: float = 0.0):
    """Per-latent-pixel loss weights (N x 1 x h x w): 1 + ``person_weight`` x the person's share of each
    latent pixel's ``factor`` x ``factor`` image patch + ``lower_weight`` x the share of its lower half."""
    import torch

    def share(m):
        return torch.nn.functional.avg_pool2d(torch.from_numpy(m).float()[:, None], factor)

    weights = 1.0 + person_weight * share(masks)
    return weights + lower_weight * share(lower_half(masks)) if lower_weight else weights


def to_tensor(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ----------------------------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------------------------
def build_models(cfg: ToyBaseConfig, tokenizer):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    h, w = cfg.pool.height, cfg.pool.width
    factor = 2 ** (len(cfg.vae_channels) - 1)
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=tuple(cfg.vae_channels),
                        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
                        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
                        layers_per_block=1, norm_num_groups=32, sample_size=max(h, w))
    torch.manual_seed(cfg.seed + 1)
    n = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=(h // factor, w // factor), in_channels=4, out_channels=4,
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=2,
        # attention only below the top level: full-resolution attention halves CPU speed (probe)
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=8, norm_num_groups=32,
        **(dict(addition_embed_type="text", addition_embed_type_num_heads=4) if cfg.text_time_embedding else {}))
    torch.manual_seed(cfg.seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=4 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=4, max_position_embeddings=77,
        projection_dim=cfg.text_hidden, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return vae, unet, text_encoder, scheduler


@dataclass(frozen=True)
class UnetPhase:
    """One UNet + text-encoder training phase: its own optimiser, schedule, loss weighting and checkpoint."""

    name: str
    steps: int
    lr: float
    warmup_steps: int
    ema_decay: float
    snr_gamma: float | None
    seed: int

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 10% of the peak."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        t = (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def unet_phases(cfg: ToyBaseConfig) -> list[UnetPhase]:
    phases = []
    if cfg.init_from is None:
        phases.append(UnetPhase("unet", cfg.unet_steps, cfg.unet_lr, cfg.warmup_steps, cfg.ema_decay, cfg.snr_gamma,
                                cfg.seed))
    if cfg.refine is not None:
        r = cfg.refine
        phases.append(UnetPhase("refine", r.steps, r.lr, r.warmup_steps, r.ema_decay, r.snr_gamma, cfg.seed + 1))
    return phases


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------
def _save_state(path: Path, tensors: dict, meta: dict) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save({"tensors": tensors, "meta": meta}, tmp)


def _load_state(path: Path):
    import torch

    return torch.load(path, weights_only=True) if path.is_file() else None


def train_vae(cfg: ToyBaseConfig, vae, images: np.ndarray, work: Path, log) -> float:
    """Train the VAE (resumable) and return the latent scaling factor (1 / std of latents)."""
    import torch
    from tqdm import tqdm

    done = work / "vae.pt"
    state = _load_state(done)
    if state is not None:
        vae.load_state_dict(state["tensors"]["model"])
        return float(state["meta"]["scaling_factor"])
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    vae.train()
    bar = tqdm(range(cfg.vae_steps), desc="vae", unit="step")
    for step in bar:
        x = to_tensor(images[rng.integers(len(images), size=cfg.vae_batch)])
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        mse = torch.nn.functional.mse_loss(recon, x)
        loss = mse + cfg.kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}")
            log({"stage": "vae", "step": step, "mse": mse.item()})
    vae.eval()
    with torch.no_grad():
        sample = to_tensor(images[rng.integers(len(images), size=512)])
        latents = vae.encode(sample).latent_dist.mean
        scaling = float(1.0 / latents.std())
        mse = float(torch.nn.functional.mse_loss(vae.decode(latents).sample, sample))
    log({"stage": "vae", "step": cfg.vae_steps, "mse": mse, "scaling_factor": scaling})
    _save_state(done, {"model": vae.state_dict()}, {"scaling_factor": scaling, "mse": mse})
    return scaling


def encode_pool(vae, images: np.ndarray, batch: int = 256):
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(vae.encode(to_tensor(images[i:i + batch])).latent_dist.mean)
    return torch.cat(out)


def train_unet(phase: UnetPhase, batch: int, uncond_prob: float, checkpoint_every: int, unet, text_encoder,
               tokenizer, scheduler_config, latents, captions: list[str], work: Path, log, on_sample=None,
               sample_every: int = 0, origin: str = "", weights=None):
    """Train UNet + text encoder on cached latents for one phase (resumable; ``work/<phase>-ckpt.pt``).
    Starts from the modules' current weights with a fresh optimiser; returns the phase's EMA state dicts.
    ``origin`` names those starting weights: a checkpoint made from other ones is not resumed. ``weights``
    (N x 1 x h x w, from ``latent_weights``) weight each latent pixel's noise loss."""
    import torch
    from diffusers import DDPMScheduler
    from tqdm import tqdm

    noise_sched = DDPMScheduler.from_config(scheduler_config)
    alphas = noise_sched.alphas_cumprod
    params = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=1e-2)
    ema = {"unet": {k: v.detach().clone() for k, v in unet.state_dict().items()},
           "text": {k: v.detach().clone() for k, v in text_encoder.state_dict().items()}}
    ckpt = work / ("unet-ckpt.pt" if phase.name == "unet" else f"{phase.name}-ckpt.pt")
    start = 0
    state = _load_state(ckpt)
    if state is not None and state["meta"].get("origin", "") != origin:
        print(f"{ckpt}: started from other weights ({state['meta'].get('origin')!r}); training {phase.name} anew")
        state = None
    if state is not None:
        unet.load_state_dict(state["tensors"]["unet"])
        text_encoder.load_state_dict(state["tensors"]["text"])
        ema = {"unet": state["tensors"]["ema_unet"], "text": state["tensors"]["ema_text"]}
        opt.load_state_dict(state["tensors"]["opt"])
        start = int(state["meta"]["step"])
    ids = tokenizer(captions + [""], padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    empty = ids[-1]
    ids = ids[:-1]
    gen = torch.Generator().manual_seed(phase.seed)
    unet.train()
    text_encoder.train()
    bar = tqdm(range(start, phase.steps), desc=phase.name, unit="step", initial=start, total=phase.steps)
    for step in bar:
        gen.manual_seed(phase.seed * 1_000_003 + step)  # batch/noise of a step do not depend on resuming
        pick = torch.randint(len(latents), (batch,), generator=gen)
        x0 = latents[pick]
        tok = ids[pick].clone()
        drop = torch.rand(batch, generator=gen) < uncond_prob
        tok[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        cond = text_encoder(tok).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        err = ((pred - noise) ** 2).mean(dim=1, keepdim=True)
        if weights is None:
            per_sample = err.mean(dim=(1, 2, 3))
        else:
            w = weights[pick]
            per_sample = (err * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))
        if phase.snr_gamma is not None:
            snr = alphas[t] / (1 - alphas[t])
            per_sample = per_sample * torch.clamp(snr, max=phase.snr_gamma) / snr
        loss = per_sample.mean()
        lr = phase.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(phase.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, module in (("unet", unet), ("text", text_encoder)):
                for k, v in module.state_dict().items():
                    if v.dtype.is_floating_point:
                        ema[name][k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                    else:
                        ema[name][k].copy_(v)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log({"stage": phase.name, "step": step, "loss": loss.item(), "lr": lr})
        if (step + 1) % checkpoint_every == 0 or step + 1 == phase.steps:
            _save_state(ckpt, {"unet": unet.state_dict(), "text": text_encoder.state_dict(), "ema_unet": ema["unet"],
                               "ema_text": ema["text"], "opt": opt.state_dict()}, {"step": step + 1, "origin": origin})
        if on_sample is not None and sample_every and (step + 1) % sample_every == 0 and step + 1 < phase.steps:
            on_sample(f"{phase.name}-{step + 1:05d}", step + 1, ema)
    return ema


def assemble_pipeline(cfg: ToyBaseConfig, vae, unet, text_encoder, tokenizer, scheduler, scaling: float, ema=None):
    import copy

    from diffusers import StableDiffusionPipeline

    unet, text_encoder = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    if ema is not None:
        unet.load_state_dict(ema["unet"])
        text_encoder.load_state_dict(ema["text"])
    vae.register_to_config(scaling_factor=scaling)
    pipe = StableDiffusionPipeline(vae=vae, unet=unet.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


SAMPLE_PROMPTS = [("red", "blue"), ("yellow", "black"), ("white", "green"), ("purple", "gray"), ("orange", "pink"),
                  ("cyan", "brown")]


def sample_prompt(upper: str, lower: str) -> str:
    return f"a photo of person, a person with short black hair wearing a {upper} shirt, {lower} trousers, black shoes"


def sample_rows(pipe, per_prompt: int, steps: int, guidance: float, seed: int = 0) -> list[list]:
    """One row of seeded samples per SAMPLE_PROMPTS pair (shirt/trousers colours)."""
    import torch

    rows = []
    for r, (upper, lower) in enumerate(SAMPLE_PROMPTS):
        gens = [torch.Generator().manual_seed(seed + 100 * r + k) for k in range(per_prompt)]
        rows.append(pipe([sample_prompt(upper, lower)] * per_prompt, num_inference_steps=steps,
                         guidance_scale=guidance, generator=gens,
                         height=pipe.unet.config.sample_size[0] * pipe.vae_scale_factor,
                         width=pipe.unet.config.sample_size[1] * pipe.vae_scale_factor).images)
    return rows


def sample_grid(pipe, path: Path, per_prompt: int = 6, steps: int = 25, guidance: float = 4.0, seed: int = 0):
    """Rows: SAMPLE_PROMPTS (shirt/trousers colours); returns the images per row."""
    from PIL import Image

    rows = sample_rows(pipe, per_prompt, steps, guidance, seed)
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * per_prompt, h * len(rows)))
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            grid.paste(im, (c * w, r * h))
    with atomic_path(path) as tmp:
        grid.resize((grid.width * 2, grid.height * 2), Image.NEAREST).save(tmp, format="PNG")
    return rows


def train_toy_base(cfg: ToyBaseConfig, out_dir, work_dir=None, captioner=None, pool=None) -> dict:
    """Train the toy base pipeline and write it to ``out_dir`` (a diffusers folder). ``work_dir`` keeps the
    resumable checkpoints, the loss log and sample grids. With a ``captioner`` (the toy attribute predictor),
    prompt following is measured: how often generated shirts/trousers have the prompted colour. ``pool`` is
    ``render_pool(cfg.pool, with_masks=True)``'s result when the caller already rendered it."""
    import torch

    from diffreid.models.assets import resolve_model_path
    from diffreid.models.tiny import build_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    work = Path(work_dir) if work_dir else out.parent / f".{out.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "log.jsonl"
    t_start = time.time()

    def log(row):
        with open(log_path, "a") as f:
            f.write(json.dumps({**row, "time_s": round(time.time() - t_start, 1)}) + "\n")

    rng = np.random.default_rng(cfg.seed)
    seconds: dict[str, float] = {}
    if cfg.init_from is None:
        images, owners, views, masks = pool if pool is not None else render_pool(cfg.pool, with_masks=True)
        captions = [training_caption(o, v if rng.random() < cfg.view_prob else None) for o, v in zip(owners, views)]
        tokenizer = build_tokenizer(work / "tokenizer", words=caption_words())
        vae, unet, text_encoder, scheduler = build_models(cfg, tokenizer)
        if cfg.vae_from is not None:
            vae, scaling = load_vae(cfg.vae_from)
        else:
            t0 = time.time()
            scaling = train_vae(cfg, vae, images, work, log)
            seconds["vae"] = round(time.time() - t0, 1)
    else:
        vae, unet, text_encoder, tokenizer, scheduler, scaling, seconds = load_first_phase(cfg.init_from)
    vae.eval().requires_grad_(False)
    text_encoder.requires_grad_(cfg.train_text_encoder)
    if cfg.init_from is None and cfg.unet_pool is not None and cfg.unet_pool != cfg.pool:
        images, owners, views, masks = render_pool(cfg.unet_pool, with_masks=True)
        captions = [training_caption(o, v if rng.random() < cfg.view_prob else None) for o, v in zip(owners, views)]
    latents = encode_pool(vae, images) * scaling if cfg.init_from is None else None

    def person_weights():
        if not (cfg.person_weight or cfg.lower_weight):
            return None
        return latent_weights(masks, images.shape[1] // latents.shape[2], cfg.person_weight, cfg.lower_weight)

    def on_sample(tag, step, ema):
        pipe = assemble_pipeline(cfg, vae, unet, text_encoder, tokenizer, scheduler, scaling, ema)
        rows = sample_grid(pipe, work / f"samples-{tag}.png", per_prompt=4, steps=cfg.eval.steps,
                           guidance=cfg.eval.guidance, seed=cfg.eval.seed)
        if captioner is not None:
            log({"stage": "eval", "phase": tag.split("-")[0], "step": step, **prompt_following(captioner, rows)})

    ema, pool_images = None, {}
    origin = recipe_fingerprint(cfg) if cfg.init_from is None else (
        f"init_from={Path(resolve_model_path(cfg.init_from)).resolve()} person_weight={cfg.person_weight} "
        f"lower_weight={cfg.lower_weight}")
    for phase in unet_phases(cfg):
        if ema is not None:  # each phase starts from the previous phase's EMA weights
            unet.load_state_dict(ema["unet"])
            text_encoder.load_state_dict(ema["text"])
        if phase.name == "refine" and (cfg.refine.pool != (cfg.unet_pool or cfg.pool) or latents is None):
            images, owners, views, masks = render_pool(cfg.refine.pool, with_masks=True)
            pick = np.random.default_rng(cfg.refine.pool.seed)
            captions = [training_caption(o, v if pick.random() < cfg.view_prob else None) for o, v in zip(owners, views)]
            latents = encode_pool(vae, images) * scaling
            origin = json.dumps([origin, cfg.refine.pool.model_dump(mode="json")], sort_keys=True)
        t0 = time.time()
        ema = train_unet(phase, cfg.unet_batch, cfg.uncond_prob, cfg.checkpoint_every, unet, text_encoder, tokenizer,
                         scheduler.config, latents, captions, work, log, on_sample, cfg.sample_every, origin,
                         person_weights())
        seconds[phase.name] = round(time.time() - t0, 1)
        pool_images[phase.name] = int(len(latents))
        origin = json.dumps([origin, dataclasses.asdict(phase)], sort_keys=True)
    pipe = assemble_pipeline(cfg, vae, unet, text_encoder, tokenizer, scheduler, scaling, ema)
    with atomic_dir(out, replace=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(tmp / "diffreid_toy_base.json", {
            "config": cfg.model_dump(mode="json"), "scaling_factor": scaling, "train_seconds": seconds,
            "pool_images": pool_images})
    sample_grid(pipe, work / "samples-final.png", steps=cfg.eval.steps, guidance=cfg.eval.guidance, seed=cfg.eval.seed)
    plot_losses(log_path, work / "loss.png")
    shutil.copy(work / "samples-final.png", out / "samples.png")
    result = {"train_seconds": seconds, "scaling_factor": scaling, "out": str(out)}
    if captioner is not None:
        result["prompt_following"] = measure_prompt_following(pipe, captioner, cfg.eval)
        atomic_write_json(out / "diffreid_toy_base_eval.json", result["prompt_following"])
    return result


def recipe_fingerprint(cfg: ToyBaseConfig) -> str:
    """What fixes the first phase's weights: a checkpoint made by another recipe (architecture, data, optimiser)
    is not resumed. More steps, evaluation and logging settings may change between runs."""
    import hashlib

    from diffreid.models.tiny import tiny_vocab

    ignored = {"unet_steps", "eval", "sample_every", "checkpoint_every", "threads", "refine", "init_from"}
    merges = hashlib.sha256("\n".join(tiny_vocab(caption_words())[1]).encode()).hexdigest()[:16]
    return json.dumps({**cfg.model_dump(mode="json", exclude=ignored), "tokenizer_merges": merges}, sort_keys=True)


def load_vae(folder: str):
    """(vae, scaling factor) of a saved toy-base folder."""
    from diffusers import AutoencoderKL

    from diffreid.models.assets import resolve_model_path

    path = Path(resolve_model_path(folder))
    if not (path / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"vae_from={folder!r}: {path} has no vae/ folder of a diffusers pipeline")
    vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True)
    return vae, float(vae.config.scaling_factor)


def load_first_phase(folder: str):
    """(vae, unet, text encoder, tokenizer, scheduler, scaling, train seconds) of a saved toy-base folder."""
    from diffusers import StableDiffusionPipeline

    from diffreid.models.assets import resolve_model_path

    path = Path(resolve_model_path(folder))
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"init_from={folder!r}: {path} is not a diffusers pipeline folder")
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    record = path / "diffreid_toy_base.json"
    seconds = json.loads(record.read_text()).get("train_seconds", {}) if record.is_file() else {}
    return (pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
            float(pipe.vae.config.scaling_factor), dict(seconds))


def measure_prompt_following(pipe, captioner, cfg: PromptFollowingConfig) -> dict:
    """Prompt following at the demo's sampling settings: SAMPLE_PROMPTS x ``per_prompt`` seeded samples."""
    rows = sample_rows(pipe, cfg.per_prompt, cfg.steps, cfg.guidance, cfg.seed)
    return {**prompt_following(captioner, rows), "steps": cfg.steps, "guidance": cfg.guidance}


def prompt_following(captioner, rows) -> dict:
    """Share of sample-grid images whose predicted shirt / trouser colour is the prompted one."""
    upper_ok = lower_ok = n = 0
    for (upper, lower), images in zip(SAMPLE_PROMPTS, rows):
        for attrs in captioner.predict(images):
            upper_ok += attrs["upper_colour"] == upper
            lower_ok += attrs["lower_colour"] == lower
            n += 1
    return {"upper_colour": upper_ok / n, "lower_colour": lower_ok / n, "images": n}


def plot_losses(log_path: Path, out: Path) -> Path:
    """VAE reconstruction MSE and UNet noise-prediction loss (smoothed) against step, from log.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    offset = max((r["step"] + 1 for r in rows if r["stage"] == "unet"), default=0)
    for ax, stages, key in ((axes[0], ("vae",), "mse"), (axes[1], ("unet", "refine"), "loss")):
        pts = [(r["step"] + (offset if r["stage"] == "refine" else 0), r[key])
               for r in rows if r["stage"] in stages and key in r]
        if not pts:
            continue
        stage = "+".join(s for s in stages if any(r["stage"] == s for r in rows))
        steps, values = map(np.asarray, zip(*pts))
        ax.plot(steps, values, alpha=0.3, color="C0")
        k = min(10, len(values))
        ax.plot(steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid"), color="C0")
        ax.set(title=f"{stage} {key}", xlabel="step", yscale="log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
