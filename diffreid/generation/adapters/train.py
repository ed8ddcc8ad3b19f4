"""Identity-adapter training: per-ID LoRA, per-ID DreamBooth, or one shared LoRA + a token per ID (DiVE).

All three modes run the same loop: cached VAE latents, DDPM noising, eq. 1 (identity images with the IIR
prompt + lambda x attribute-reference images with the token-less prompt), seeded, checkpointed and resumable.
The resident pipeline is left as it was found: training adapters are removed, a DreamBooth run trains a copy.
Public entry points: train_identity_adapter (lora, dreambooth), train_shared_lora_ti (a caption per identity)
and train_shared_lora_ti_per_image (a prompt and pid per image); the rest is private to this module.
"""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from diffreid.config import ConfigError
from diffreid.generation.adapters.config import AdapterConfig, check_resolution
from diffreid.generation.adapters.loss import prior_preservation_loss, timestep_weights, training_target
from diffreid.generation.adapters.store import (ADAPTER_JSON, LORA_FILE, TOKENS_FILE, TOKENS_JSON, UNET_DIR,
                                                AdapterError, read_adapter_meta, reset_training_state,
                                                restore_training_state)
from diffreid.io import atomic_path, atomic_write_json

ImageLike = Image.Image | str | Path
StepCallback = Callable[[int, float], None]
LOSSES_JSON = "losses.json"
CHECKPOINT_POINTER = "checkpoint.json"
TRAIN_ADAPTER = "diffreid_training"  # not "train": peft adapter names become attributes of nn.Module


@dataclass
class AdapterResult:
    dir: Path
    losses: list[float]
    steps: int
    seconds: float
    bytes: int
    mode: str = "lora"
    tokens: dict[int, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# data: images -> cached latent distributions, prompts -> token ids
# ----------------------------------------------------------------------------------------------------------
def load_images(images: Sequence[ImageLike], what: str) -> list[Image.Image]:
    out = []
    for item in images:
        if isinstance(item, Image.Image):
            out.append(item.convert("RGB"))
            continue
        try:
            with Image.open(item) as im:
                out.append(im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise AdapterError(f"{what}: cannot read image {item}: {err}") from None
    return out


def to_uint8(images: list[Image.Image], height: int, width: int) -> np.ndarray:
    return np.stack([np.asarray(im.resize((width, height), Image.BICUBIC)) for im in images])


class _ImageSet:
    """Images of one role (instance or reference), their prompts, and their cached VAE latent moments."""

    def __init__(self, images: list[Image.Image], prompts: list[str], cfg: AdapterConfig):
        self.pixels = to_uint8(images, cfg.height, cfg.width)
        self.prompts = sorted(set(prompts))
        self.prompt_index = torch.tensor([self.prompts.index(p) for p in prompts])
        self.mean = self.std = None

    def __len__(self) -> int:
        return len(self.pixels)

    def digest(self) -> str:
        h = hashlib.sha1(self.pixels.tobytes())
        h.update(json.dumps([self.prompts, self.prompt_index.tolist()]).encode())
        return h.hexdigest()

    @torch.no_grad()
    def encode(self, vae, device, chunk: int = 8) -> None:
        x = torch.from_numpy(self.pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
        means, stds = [], []
        for i in range(0, len(x), chunk):
            dist = vae.encode(x[i:i + chunk].to(device, vae.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
        self.mean, self.std = torch.cat(means), torch.cat(stds)

    def sample(self, index: torch.Tensor, gen: torch.Generator, vae) -> torch.Tensor:
        mean, std = self.mean[index.to(self.mean.device)], self.std[index.to(self.mean.device)]
        eps = torch.randn(mean.shape, generator=gen).to(mean.device)
        latents = mean + std * eps
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor


def token_ids(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


# ----------------------------------------------------------------------------------------------------------
# what is trained, per mode
# ----------------------------------------------------------------------------------------------------------
class _LoraJob:
    """A peft LoRA on the resident UNet's attention projections (and optionally the text encoder)."""

    text_trainable = False

    def __init__(self, pipe, cfg: AdapterConfig):
        from peft import LoraConfig

        self.pipe, self.cfg, self.unet, self.text_encoder = pipe, cfg, pipe.unet, pipe.text_encoder
        self.tokenizer = pipe.tokenizer
        self.flags = [(p, p.requires_grad) for m in (self.unet, self.text_encoder) for p in m.parameters()]
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.unet_lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.target_modules,
                                    init_lora_weights=True)
        self.text_lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=cfg.text_target_modules,
                                    init_lora_weights=True)
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")  # resident ids: meant
            torch.manual_seed(cfg.runtime.seed)
            self.unet.add_adapter(self.unet_lora, adapter_name=TRAIN_ADAPTER)
            self.unet.enable_adapters()
            self.unet.set_adapter(TRAIN_ADAPTER)
            if cfg.train_text_encoder:
                self.text_encoder.add_adapter(self.text_lora, adapter_name=TRAIN_ADAPTER)
                self.text_encoder.enable_adapters()
                self.text_encoder.set_adapter(TRAIN_ADAPTER)
                self.text_trainable = True
        self.text_lora_added = cfg.train_text_encoder
        self.named = {f"unet.{n}": p for n, p in self.unet.named_parameters() if f".{TRAIN_ADAPTER}." in n}
        if cfg.train_text_encoder:
            self.named.update({f"text_encoder.{n}": p for n, p in self.text_encoder.named_parameters()
                               if f".{TRAIN_ADAPTER}." in n})
        for p in self.named.values():
            p.data = p.data.float()
            p.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.named.values()), "lr": self.cfg.resolved_lr}]

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids.to(self.unet.device))[0]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().contiguous() for n, p in self.named.items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        for n, p in self.named.items():
            p.data.copy_(state[n])

    def save(self, out: Path) -> None:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        unet_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet, adapter_name=TRAIN_ADAPTER))
        text_layers = None
        if self.cfg.train_text_encoder:
            text_layers = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(self.text_encoder, adapter_name=TRAIN_ADAPTER))
        save_lora_file(out, unet_layers, self.unet_lora, text_layers, self.text_lora if text_layers else None)

    def close(self) -> None:
        if self.cfg.gradient_checkpointing:
            self.unet.disable_gradient_checkpointing()
        with warnings.catch_warnings():  # peft then activates a resident identity adapter; callers set their own
            warnings.filterwarnings("ignore", message=f"Adapter {TRAIN_ADAPTER} was active which is now deleted")
            self.unet.delete_adapters(TRAIN_ADAPTER)
            if self.text_lora_added:
                self.text_encoder.delete_adapter(TRAIN_ADAPTER)
        for p, flag in self.flags:
            p.requires_grad_(flag)


class _ExtendedEmbedding(torch.nn.Module):
    """The text encoder's token embedding plus trainable rows for new tokens (ids >= first_new)."""

    def __init__(self, base: torch.nn.Embedding, first_new: int, rows: torch.nn.Parameter):
        super().__init__()
        self.base, self.first_new, self.rows = base, first_new, rows

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        known = ids < self.first_new
        out = self.base(torch.where(known, ids, torch.zeros_like(ids)))
        new = self.rows[(ids - self.first_new).clamp(min=0, max=len(self.rows) - 1)].to(out.dtype)
        return torch.where(known.unsqueeze(-1), out, new)


class _SharedLoraTIJob(_LoraJob):
    """DiVE: one LoRA shared by all identities + one textual-inversion token row per identity."""

    text_trainable = True

    def __init__(self, pipe, cfg: AdapterConfig, pids: list[int]):
        super().__init__(pipe, cfg)
        self.pids = pids
        self.tokens = tokens = [cfg.token(pid) for pid in pids]
        self.tokenizer = copy.deepcopy(pipe.tokenizer)  # the resident tokenizer never sees training tokens
        vocab = self.tokenizer.get_vocab()
        clash = [t for t in tokens if t in vocab]
        if clash:
            self.close()
            raise AdapterError(f"tokens {clash[:3]} already exist in the tokenizer; change token_template")
        self.first_new = len(self.tokenizer)
        self.tokenizer.add_tokens(tokens)
        ids = self.tokenizer.convert_tokens_to_ids(tokens)
        if ids != list(range(self.first_new, self.first_new + len(tokens))):
            self.close()
            raise AdapterError(f"the tokenizer did not give new tokens consecutive ids: {ids[:4]}")
        self.embedding = self.text_encoder.get_input_embeddings()
        init_ids = self.tokenizer(cfg.token_init_word, add_special_tokens=False).input_ids
        init = self.embedding.weight[torch.tensor(init_ids, device=self.embedding.weight.device)].mean(0)
        self.rows = torch.nn.Parameter(init.detach().float().repeat(len(tokens), 1))
        self.text_encoder.set_input_embeddings(_ExtendedEmbedding(self.embedding, self.first_new, self.rows))
        self.named["token_rows"] = self.rows

    def param_groups(self) -> list[dict]:
        lora = [p for n, p in self.named.items() if n != "token_rows"]
        return [{"params": lora, "lr": self.cfg.resolved_lr},
                {"params": [self.rows], "lr": self.cfg.embedding_lr, "weight_decay": 0.0}]

    def save(self, out: Path) -> None:
        from safetensors.torch import save_file

        super().save(out)
        rows = self.rows.detach().cpu()
        with atomic_path(out / TOKENS_FILE) as tmp:
            save_file({t: rows[i].clone() for i, t in enumerate(self.tokens)}, str(tmp))
        atomic_write_json(out / TOKENS_JSON, {t: pid for t, pid in zip(self.tokens, self.pids)})

    def close(self) -> None:
        if hasattr(self, "embedding"):
            self.text_encoder.set_input_embeddings(self.embedding)
        super().close()


class _DreamBoothJob:
    """Full fine-tune of a float32 copy of the resident UNet; the resident one is never touched."""

    text_trainable = False

    def __init__(self, pipe, cfg: AdapterConfig):
        from diffusers import UNet2DConditionModel

        self.pipe, self.cfg, self.text_encoder, self.tokenizer = pipe, cfg, pipe.text_encoder, pipe.tokenizer
        self.base_dtype = pipe.unet.dtype
        self.unet = UNet2DConditionModel.from_config(pipe.unet.config)
        self.unet.load_state_dict(plain_state_dict(pipe.unet))
        self.unet.to(pipe.unet.device, torch.float32)
        self.unet.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.unet.parameters()), "lr": self.cfg.resolved_lr}]

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(ids.to(self.unet.device))[0]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().cpu().contiguous() for n, t in self.unet.state_dict().items()}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        self.unet.load_state_dict(state)

    @property
    def stored_mode(self) -> str:
        return "lora" if self.cfg.dreambooth_store == "lora" else "dreambooth"

    def save(self, out: Path) -> None:
        if self.cfg.dreambooth_store == "lora":
            self.save_extracted(out)
            return
        self.unet.to(self.base_dtype)
        staged = out / f".{UNET_DIR}.staged"
        shutil.rmtree(staged, ignore_errors=True)
        self.unet.save_pretrained(staged, safe_serialization=True)
        shutil.rmtree(out / UNET_DIR, ignore_errors=True)
        staged.rename(out / UNET_DIR)

    def save_extracted(self, out: Path) -> None:
        from diffusers.utils import convert_state_dict_to_diffusers

        from diffreid.generation.adapters.extract import extract_lora

        state, lora_cfg, report = extract_lora(plain_state_dict(self.pipe.unet), self.unet, self.cfg.extract_rank)
        save_lora_file(out, convert_state_dict_to_diffusers(state), lora_cfg)
        self.meta = {"extracted_from": "dreambooth", "extract_rank": self.cfg.extract_rank,
                     "extracted_layers": report.layers, "kept_energy": report.kept_energy,
                     "not_stored": report.lost[:50]}

    def close(self) -> None:
        self.unet = None


def save_lora_file(out: Path, unet_layers: dict, unet_lora, text_layers: dict | None = None, text_lora=None) -> None:
    """OUT/pytorch_lora_weights.safetensors in the diffusers format, written whole or not at all."""
    from diffusers import StableDiffusionPipeline

    staging = out / ".lora.staged"
    shutil.rmtree(staging, ignore_errors=True)
    StableDiffusionPipeline.save_lora_weights(
        staging, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers, safe_serialization=True,
        weight_name=LORA_FILE, unet_lora_adapter_metadata=unet_lora.to_dict(),
        text_encoder_lora_adapter_metadata=text_lora.to_dict() if text_layers else None)
    (staging / LORA_FILE).replace(out / LORA_FILE)
    shutil.rmtree(staging)


def plain_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's weights without peft LoRA layers (a UNet that served LoRA adapters keeps their wrappers)."""
    return {k.replace(".base_layer.", "."): v for k, v in module.state_dict().items() if ".lora_" not in k}


# ----------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------
def _latest_checkpoint(out: Path) -> Path | None:
    pointer = out / CHECKPOINT_POINTER
    if not pointer.is_file():
        return None
    folder = out / json.loads(pointer.read_text())["dir"]
    return folder if folder.is_dir() else None


def _save_checkpoint(out: Path, step: int, job, optimizer, scaler, gen: torch.Generator, losses: list[dict],
                     fingerprint: str) -> None:
    from safetensors.torch import save_file

    folder = out / f"checkpoint-{step:07d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    save_file(job.trainable_state(), str(folder / "trainable.safetensors"))
    save_file({"cpu": gen.get_state()}, str(folder / "rng.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}, folder / "optimizer.pt")
    atomic_write_json(folder / "state.json", {"step": step, "fingerprint": fingerprint, "losses": losses})
    previous = _latest_checkpoint(out)
    atomic_write_json(out / CHECKPOINT_POINTER, {"dir": folder.name})
    if previous is not None and previous != folder:
        shutil.rmtree(previous, ignore_errors=True)


def _load_checkpoint(folder: Path, job, optimizer, scaler, gen: torch.Generator, fingerprint: str):
    from safetensors.torch import load_file

    state = json.loads((folder / "state.json").read_text())
    if state["fingerprint"] != fingerprint:
        raise AdapterError(f"{folder} was written by a run with another config or other images; "
                           "remove the output folder or choose another one")
    job.load_trainable_state(load_file(folder / "trainable.safetensors"))
    gen.set_state(load_file(folder / "rng.safetensors")["cpu"])
    saved = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    optimizer.load_state_dict(saved["optimizer"])
    scaler.load_state_dict(saved["scaler"])
    return state["step"], state["losses"]


def _artifact_bytes(out: Path, mode: str) -> int:
    names = {"lora": [LORA_FILE], "dreambooth": [UNET_DIR], "shared_lora_ti": [LORA_FILE, TOKENS_FILE, TOKENS_JSON]}
    total = 0
    for name in names[mode]:
        path = out / name
        total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return total


def _finished(out: Path, fingerprint: str, steps: int) -> AdapterResult | None:
    if not (out / ADAPTER_JSON).is_file():
        return None
    meta = read_adapter_meta(out)
    if meta.get("fingerprint") != fingerprint or meta.get("steps") != steps:
        raise AdapterError(f"{out} already holds an adapter trained with another config, images or step count; "
                           "remove it or choose another output folder")
    losses = json.loads((out / LOSSES_JSON).read_text())
    return AdapterResult(dir=out, losses=[e["loss"] for e in losses], steps=steps, seconds=0.0,
                         bytes=_artifact_bytes(out, meta["mode"]), mode=meta["mode"],
                         tokens={int(p): t for t, p in meta.get("tokens", {}).items()})


# ----------------------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------------------
def make_optimizer(cfg: AdapterConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (blockwise-quantised moments; it has CPU and CUDA kernels)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=1e-2)
    try:
        import bitsandbytes
    except ImportError:
        raise ConfigError("adapter.optimizer: adamw8bit needs bitsandbytes (pip install 'diffreid[gpu]')") from None
    return bitsandbytes.optim.AdamW8bit(groups, weight_decay=1e-2)


def _fingerprint(cfg: AdapterConfig, inst: _ImageSet, ref: _ImageSet | None, name: str) -> str:
    knobs = cfg.model_dump(mode="json", exclude={"steps", "checkpoint_every", "gradient_checkpointing"})
    if knobs["mode"] != "dreambooth" or knobs["dreambooth_store"] == "unet":  # adapters trained before these fields
        knobs.pop("dreambooth_store"), knobs.pop("extract_rank")
    knobs["runtime"].pop("device", None)
    knobs["runtime"].pop("gpu_memory_gb", None)
    if knobs["optimizer"] == "adamw":  # adapters trained before the field
        knobs.pop("optimizer")
    payload = json.dumps([knobs, cfg.resolved_lr, inst.digest(), ref.digest() if ref else None, name],
                         sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()


def _train(pipe, job_factory: Callable[[], object], cfg: AdapterConfig, out: Path, inst: _ImageSet,
           ref: _ImageSet | None, name: str, meta_extra: dict, on_step: StepCallback | None) -> AdapterResult:
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    # 1. inputs and a finished run
    check_resolution(pipe, cfg.height, cfg.width)
    if ref is None and cfg.prior_loss_weight > 0:
        raise ConfigError("prior_loss_weight > 0 needs attribute-reference images (eq. 1's second term); "
                          "pass ref_images or set prior_loss_weight=0")
    steps = cfg.resolved_steps
    fingerprint = _fingerprint(cfg, inst, ref, name)
    out.mkdir(parents=True, exist_ok=True)
    done = _finished(out, fingerprint, steps)
    if done is not None:
        return done
    device = pipe.unet.device
    wanted = cfg.runtime.device
    if wanted != "auto" and torch.device(wanted).type != device.type:
        raise ConfigError(f"runtime.device={wanted!r} but the pipeline is on {device.type}: load it there")
    amp_dtype = cfg.runtime.torch_dtype() if device.type == "cuda" else torch.float32
    started = time.perf_counter()

    # 2. cached latents, a DDPM noise schedule from the pipeline's own betas
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    inst.encode(pipe.vae, device)
    if ref is not None:
        ref.encode(pipe.vae, device)
    state = reset_training_state(pipe)
    job = job_factory()
    try:
        # 3. prompts: frozen text encoders are run once per distinct prompt
        sets = [s for s in (inst, ref) if s is not None]
        ids = [token_ids(job.tokenizer, s.prompts) for s in sets]
        cached = None
        if not job.text_trainable:
            with torch.no_grad():
                cached = [job.encode(i).float() for i in ids]

        # 4. optimiser, generator, resume
        optimizer = make_optimizer(cfg, job.param_groups())
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
        gen = torch.Generator().manual_seed(cfg.runtime.seed)
        start, losses = 0, []
        checkpoint = _latest_checkpoint(out)
        if checkpoint is not None:
            start, losses = _load_checkpoint(checkpoint, job, optimizer, scaler, gen, fingerprint)
        autocast = (torch.autocast("cuda", dtype=amp_dtype) if amp_dtype is not torch.float32 else nullcontext())
        batch = [cfg.instance_batch_size] + ([cfg.prior_batch_size] if ref is not None else [])
        params = [p for g in job.param_groups() for p in g["params"]]

        # 5. steps
        bar = tqdm(range(start, steps), desc=f"adapter {name}", disable=not sys.stderr.isatty(), initial=start,
                   total=steps)
        for step in bar:
            picks = [torch.randint(len(s), (b,), generator=gen) for s, b in zip(sets, batch)]
            latents = torch.cat([s.sample(i, gen, pipe.vae) for s, i in zip(sets, picks)])
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),), generator=gen).to(device)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            with autocast:
                if cached is not None:
                    cond = torch.cat([c[s.prompt_index[i]] for c, s, i in zip(cached, sets, picks)])
                else:
                    cond = torch.cat([job.encode(x[s.prompt_index[i]]) for x, s, i in zip(ids, sets, picks)])
                pred = job.unet(noisy.to(job.unet.dtype), t, cond.to(job.unet.dtype)).sample
            target = training_target(noise_scheduler, latents, noise, t)
            w = timestep_weights(noise_scheduler, t, cfg.weighting, cfg.snr_gamma)
            n = batch[0]
            prior = (pred[n:], target[n:], w[n:]) if ref is not None else (None, None, None)
            total, parts = prior_preservation_loss(pred[:n], target[:n], prior[0], prior[1], w[:n], prior[2],
                                                   cfg.prior_loss_weight)
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append({"step": step + 1, "loss": float(total.detach()), **parts})
            bar.set_postfix(loss=f"{losses[-1]['loss']:.4f}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                _save_checkpoint(out, step + 1, job, optimizer, scaler, gen, losses, fingerprint)
                atomic_write_json(out / LOSSES_JSON, losses)
            if on_step is not None:
                on_step(step + 1, losses[-1]["loss"])

        # 6. artifacts; adapter.json last marks the folder complete
        job.save(out)
        atomic_write_json(out / LOSSES_JSON, losses)
        stored_mode = getattr(job, "stored_mode", cfg.mode)
        meta = {"format": 1, "mode": stored_mode, "name": name, "steps": steps, "fingerprint": fingerprint,
                "height": cfg.height, "width": cfg.width, "lr": cfg.resolved_lr,
                "config": cfg.model_dump(mode="json"), **meta_extra, **getattr(job, "meta", {})}
        atomic_write_json(out / ADAPTER_JSON, meta)
    finally:
        job.close()
        restore_training_state(pipe, state)
    shutil.rmtree(_latest_checkpoint(out) or out / ".none", ignore_errors=True)
    (out / CHECKPOINT_POINTER).unlink(missing_ok=True)
    return AdapterResult(dir=out, losses=[e["loss"] for e in losses], steps=steps,
                         seconds=time.perf_counter() - started, bytes=_artifact_bytes(out, stored_mode),
                         mode=stored_mode,
                         tokens={int(p): t for t, p in meta_extra.get("tokens", {}).items()})


def _as_list(prompt: str | Sequence[str], n: int, what: str) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if len(prompts) != n:
        raise AdapterError(f"{what}: {len(prompts)} prompts for {n} images; give one prompt or one per image")
    return prompts


def _reference_set(ref_images, ref_prompt, cfg: AdapterConfig) -> _ImageSet | None:
    if not ref_images:
        return None
    images = load_images(ref_images, "ref_images")
    if ref_prompt is None:
        raise AdapterError("ref_images given without ref_prompt (the token-less LPE prompt of eq. 1)")
    return _ImageSet(images, _as_list(ref_prompt, len(images), "ref_prompt"), cfg)


def train_identity_adapter(pipe, instance_images: Sequence[ImageLike], instance_prompt: str | Sequence[str],
                           ref_images: Sequence[ImageLike] | None, ref_prompt: str | Sequence[str] | None,
                           cfg: AdapterConfig, out_dir: str | Path, adapter_name: str = "identity",
                           on_step: StepCallback | None = None) -> AdapterResult:
    """Train one identity's adapter (mode lora or dreambooth) into ``out_dir``; resumes from its checkpoint.

    ``on_step(step, loss)`` is called after every step (progress reporting; an exception there stops the
    run, and a re-run continues from the last checkpoint)."""
    if cfg.mode == "shared_lora_ti":
        raise AdapterError("mode shared_lora_ti trains many identities at once: call train_shared_lora_ti")
    images = load_images(instance_images, "instance_images")
    if not images:
        raise AdapterError("instance_images is empty: an identity adapter needs at least one image")
    inst = _ImageSet(images, _as_list(instance_prompt, len(images), "instance_prompt"), cfg)
    ref = _reference_set(ref_images, ref_prompt, cfg)
    factory = (lambda: _LoraJob(pipe, cfg)) if cfg.mode == "lora" else (lambda: _DreamBoothJob(pipe, cfg))
    extra = {"prompts": {"instance": inst.prompts, "reference": ref.prompts if ref else []}}
    return _train(pipe, factory, cfg, Path(out_dir), inst, ref, adapter_name, extra, on_step)


def train_shared_lora_ti(pipe, identities: dict[int, tuple[Sequence[ImageLike], str]], cfg: AdapterConfig,
                         out_dir: str | Path, ref_images: Sequence[ImageLike] | None = None,
                         ref_prompt: str | Sequence[str] | None = None, adapter_name: str = "shared",
                         template: str = "a photo of {token} person, {caption}",
                         on_step: StepCallback | None = None) -> AdapterResult:
    """DiVE: one LoRA for all ``identities`` ({pid: (images, caption)}) + one learned token per pid.

    Each pid's prompt is ``template`` with its token (``cfg.token_template``); batches mix identities.
    For one prompt per image, call ``train_shared_lora_ti_per_image``."""
    from diffreid.generation.prompts import fill

    if cfg.mode != "shared_lora_ti":
        raise ConfigError(f"mode={cfg.mode!r}: train_shared_lora_ti needs mode=shared_lora_ti")
    if not identities:
        raise AdapterError("identities is empty: give {pid: (images, caption)}")
    if "{token}" not in template:
        raise AdapterError(f"template {template!r} must contain {{token}}")
    images, prompts, pids = [], [], []
    for pid in sorted(identities):
        pid_images, caption = identities[pid]
        loaded = load_images(pid_images, f"identity {pid} images")
        if not loaded:
            raise AdapterError(f"identity {pid} has no images")
        images += loaded
        prompts += [fill(template, token=cfg.token(pid), caption=" ".join(caption.split()))] * len(loaded)
        pids += [pid] * len(loaded)
    return train_shared_lora_ti_per_image(pipe, images, prompts, pids, cfg, out_dir, ref_images=ref_images,
                                          ref_prompt=ref_prompt, adapter_name=adapter_name, on_step=on_step)


def train_shared_lora_ti_per_image(pipe, instance_images: Sequence[ImageLike], instance_prompt: str | Sequence[str],
                                   pids: Sequence[int], cfg: AdapterConfig, out_dir: str | Path,
                                   ref_images: Sequence[ImageLike] | None = None,
                                   ref_prompt: str | Sequence[str] | None = None, adapter_name: str = "shared",
                                   on_step: StepCallback | None = None) -> AdapterResult:
    """DiVE with one prompt per image: ``instance_images[i]`` shows identity ``pids[i]`` and its prompt holds
    that pid's token (``cfg.token``). One LoRA + one learned token per distinct pid; image order is kept."""
    # 1. inputs
    if cfg.mode != "shared_lora_ti":
        raise ConfigError(f"mode={cfg.mode!r}: train_shared_lora_ti_per_image needs mode=shared_lora_ti")
    images = load_images(instance_images, "instance_images")
    if not images:
        raise AdapterError("instance_images is empty: a shared adapter needs at least one image")
    prompts = _as_list(instance_prompt, len(images), "instance_prompt")
    pids = [int(pid) for pid in pids]
    if len(pids) != len(images):
        raise AdapterError(f"pids: {len(pids)} pids for {len(images)} images; give one pid per image")
    for pid, prompt in zip(pids, prompts):
        if cfg.token(pid) not in prompt:
            raise AdapterError(f"instance_prompt {prompt!r} lacks {cfg.token(pid)!r}, the token of its pid {pid}")

    # 2. train
    inst = _ImageSet(images, prompts, cfg)
    ref = _reference_set(ref_images, ref_prompt, cfg)
    ids = sorted(set(pids))
    extra = {"tokens": {cfg.token(pid): pid for pid in ids},
             "prompts": {"instance": inst.prompts, "reference": ref.prompts if ref else []}}
    return _train(pipe, lambda: _SharedLoraTIJob(pipe, cfg, ids), cfg, Path(out_dir), inst, ref, adapter_name, extra,
                  on_step)
