"""GPU memory one generator needs for a build, counted before any work starts.

Weights, trained copies, gradients and optimiser states are counted from the model's parameters (built from its
configs on the meta device: no weights, no memory). Activations are the peak of live tensor bytes while one
training step (forward + backward) and one sampling call run on the meta device, with attention counted as the
fused memory-efficient kernel a GPU runs (diffusers' default SDPA), so no attention matrix is materialised.
Tracing SD-1.5 takes about a second.

    plan = plan_memory(cfg)            # cfg: BuildConfig
    print(format_memory(plan))
    check_fits(plan, 24)               # ConfigError naming what to change when it cannot fit
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from diffreid.config import ConfigError

GIB = 2 ** 30
CUDA_CONTEXT_BYTES = int(0.6 * GIB)  # CUDA context + cuBLAS/cuDNN workspaces of one process
HEADROOM = 0.9  # the caching allocator fragments: plan to 90% of the card
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
ADAM_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}  # two moments per trained parameter (fp32, or 8-bit blockwise)
TRAINED_BYTES = 4 + 4  # fp32 master weight + fp32 gradient


@dataclass(frozen=True)
class Architecture:
    unet: dict
    vae: dict
    text: dict
    source: str  # where the configs came from


@dataclass
class MemoryPlan:
    """Bytes per part of the two phases of a generator: adapter training, then sampling."""

    mode: str
    dtype: str
    architecture: str
    training: dict[str, int] = field(default_factory=dict)
    sampling: dict[str, int] = field(default_factory=dict)

    @property
    def training_bytes(self) -> int:
        return sum(self.training.values())

    @property
    def sampling_bytes(self) -> int:
        return sum(self.sampling.values())

    @property
    def peak_bytes(self) -> int:
        return max(self.training_bytes, self.sampling_bytes)

    def fits(self, gpu_gib: float) -> bool:
        return self.peak_bytes <= HEADROOM * gpu_gib * GIB


# ----------------------------------------------------------------------------------------------------------
# the model's shape, from its configs
# ----------------------------------------------------------------------------------------------------------
def architecture(path: str) -> Architecture:
    """The UNet / VAE / text-encoder configs of ``path`` (a diffusers folder, ``diffreid:`` asset or hub id in
    the local cache). Where they cannot be read (a hub id offline, ``diffreid:tiny`` not built yet) the SD-1.5
    architecture is assumed and the plan says so."""
    from diffreid.models.assets import TINY_MODEL, resolve_model_path
    from diffreid.models.random import SD15

    if path == TINY_MODEL:
        raise ConfigError(f"{TINY_MODEL} is a few-MB test model built by the run itself: there is no memory to plan")
    try:
        folder = resolve_model_path(path)
        return _read_configs(folder)
    except (OSError, ValueError, FileNotFoundError):
        return Architecture(SD15["unet"], SD15["vae"], SD15["text"],
                            f"SD-1.5 assumed ({path!r}: configs not readable here)")


def _read_configs(folder: str) -> Architecture:
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig

    local = Path(folder).expanduser()
    if local.is_dir():
        unet = json.loads((local / "unet" / "config.json").read_text())
        vae = json.loads((local / "vae" / "config.json").read_text())
        text = json.loads((local / "text_encoder" / "config.json").read_text())
    else:  # a hub id: the local cache only, so a check never waits on the network
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unet = dict(UNet2DConditionModel.load_config(folder, subfolder="unet", local_files_only=True))
            vae = dict(AutoencoderKL.load_config(folder, subfolder="vae", local_files_only=True))
            text = CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True).to_dict()
    return Architecture(unet, vae, text, str(folder))


def _models(arch: Architecture, dtype):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    keep = {k: v for k, v in arch.text.items() if not k.startswith("_")}
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(arch.unet)
        vae = AutoencoderKL.from_config(arch.vae)
        text = CLIPTextModel(CLIPTextConfig(**keep))
    for m in (unet, vae, text):  # torch's own cast: diffusers' override warns about fp32-kept modules it has none of
        torch.nn.Module.to(m, dtype).requires_grad_(False)
    return unet, vae, text


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_param_count(module, rank: int, targets: list[str]) -> int:
    """Parameters of a rank-``rank`` LoRA on ``module``'s Linear layers named by ``targets`` (peft's matching)."""
    import torch

    return sum(rank * (m.in_features + m.out_features) for name, m in module.named_modules()
               if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets))


# ----------------------------------------------------------------------------------------------------------
# activations: peak live bytes on the meta device
# ----------------------------------------------------------------------------------------------------------
def _live_bytes_counter(models=()):
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        """Adds each new tensor storage an op returns, subtracts it when it is freed; keeps the peak. Views of the
        models' own weights (a transposed Linear weight) are weights, counted elsewhere, not activations."""

        def __init__(self):
            super().__init__()
            self.live = self.peak = 0
            self.seen: set[int] = {id(t.untyped_storage()) for m in models
                                   for t in (*m.parameters(), *m.buffers())}

        def _freed(self, key: int, size: int) -> None:
            self.live -= size
            self.seen.discard(key)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            import torch

            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    storage = t.untyped_storage()
                    key = id(storage)
                    if key not in self.seen:
                        self.seen.add(key)
                        self.live += storage.nbytes()
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(storage, self._freed, key, storage.nbytes())
            return out

    return LiveBytes()


class _FusedAttention:
    """The attention a GPU runs for SD-1.x (memory-efficient SDPA: no L x L matrix), traceable on meta."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *a, **k):
        import torch

        residual, shape = hidden_states, hidden_states.shape
        if hidden_states.ndim == 4:  # the VAE's mid-block attention works on feature maps
            b, c, h, w = shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, n, _ = hidden_states.shape
        heads = attn.heads
        q, key, v = (x.view(b, -1, heads, x.shape[-1] // heads).transpose(1, 2)
                     for x in (attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)))
        out = torch.ops.aten._scaled_dot_product_efficient_attention(q, key, v, None, True)[0]
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(b, n, -1)))
        if len(shape) == 4:
            out = out.transpose(1, 2).reshape(shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _trace_peak(fn, *models) -> int:
    counter = _live_bytes_counter(models)
    with counter:
        fn()
    return counter.peak


@lru_cache(maxsize=32)
def _activation_peaks(arch_key: str, dtype_name: str, train_batch: int, train_hw: tuple[int, int],
                      checkpointing: bool, train_text: bool, sample_batch: int, sample_hw: tuple[int, int],
                      guidance: bool, img2img: bool) -> tuple[int, int, int]:
    """(UNet training step, text-encoder training, sampling) peak activation bytes."""
    import torch

    arch = _ARCH_BY_KEY[arch_key]
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    unet, vae, text = _models(arch, dtype)
    unet.set_attn_processor(_FusedAttention())
    vae.set_attn_processor(_FusedAttention())
    scale = 2 ** (len(arch.vae["block_out_channels"]) - 1)
    tokens = arch.text.get("max_position_embeddings", 77)
    width = arch.unet["cross_attention_dim"]
    channels = arch.unet.get("in_channels", 4)

    def unet_step():
        h, w = train_hw
        lat = torch.empty(train_batch, channels, h // scale, w // scale, device="meta", dtype=dtype,
                          requires_grad=True)
        ctx = torch.empty(train_batch, tokens, width, device="meta", dtype=dtype)
        t = torch.zeros(train_batch, dtype=torch.long, device="meta")
        unet(lat, t, encoder_hidden_states=ctx).sample.float().square().mean().backward()

    def text_step():
        ids = torch.zeros(train_batch, tokens, dtype=torch.long, device="meta")
        out = text.get_input_embeddings()
        out.weight.requires_grad_(True)  # stands in for the LoRA: gradients flow through every layer
        text(ids)[0].float().square().mean().backward()
        out.weight.requires_grad_(False)

    def sample():
        h, w = sample_hw
        rows = sample_batch * (2 if guidance else 1)
        with torch.no_grad():
            lat = torch.empty(rows, channels, h // scale, w // scale, device="meta", dtype=dtype)
            unet(lat, torch.zeros(rows, dtype=torch.long, device="meta"),
                 encoder_hidden_states=torch.empty(rows, tokens, width, device="meta", dtype=dtype))

    def decode():
        h, w = sample_hw
        with torch.no_grad():
            vae.decode(torch.empty(sample_batch, vae.config.latent_channels, h // scale, w // scale, device="meta",
                                   dtype=dtype))
            if img2img:
                vae.encode(torch.empty(sample_batch, 3, h, w, device="meta", dtype=dtype))

    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet_peak = _trace_peak(unet_step, unet)
    if checkpointing:
        unet.disable_gradient_checkpointing()
    text_peak = _trace_peak(text_step, text) if train_text else 0
    sample_peak = max(_trace_peak(sample, unet), _trace_peak(decode, vae))
    return unet_peak, text_peak, sample_peak


_ARCH_BY_KEY: dict[str, Architecture] = {}


# ----------------------------------------------------------------------------------------------------------
# the plan
# ----------------------------------------------------------------------------------------------------------
def plan_memory(cfg, model_path: str | None = None) -> MemoryPlan:
    """Bytes one generator process holds at its two peaks, for a ``BuildConfig`` (or its Ray job config)."""
    cache = getattr(getattr(cfg, "ray", None), "adapter_cache", 1)
    return plan_parts(cfg.adapter, cfg.sampler, cfg.refset, cfg.runtime, model_path or cfg.base_model.path, cache)


def plan_parts(a, s, r, runtime, model_path: str, adapter_cache: int = 1) -> MemoryPlan:
    """The same from the stage configs themselves (adapter, sampler, reference set, runtime)."""
    import torch

    arch = architecture(model_path)
    key = repr((arch.unet, arch.vae, arch.text))
    _ARCH_BY_KEY[key] = arch
    dtype = runtime.dtype
    unet, vae, text = _models(arch, torch.float32)
    unet_n, vae_n, text_n = _params(unet), _params(vae), _params(text)
    weight = DTYPE_BYTES[dtype]
    adam = ADAM_STATE_BYTES[a.optimizer]

    if a.mode == "dreambooth":
        trained = unet_n
        adapter_bytes = unet_n * weight  # a resident DreamBooth adapter is a whole UNet
        train_text = False
    else:
        trained = lora_param_count(unet, a.rank, list(a.target_modules))
        train_text = a.train_text_encoder or a.mode == "shared_lora_ti"
        if train_text:
            trained += lora_param_count(text, a.rank, list(a.text_target_modules))
        adapter_bytes = trained * weight
    cache = adapter_cache if a.mode != "shared_lora_ti" else 1

    batch = a.instance_batch_size + (a.prior_batch_size if a.prior_loss_weight > 0 else 0)
    unet_act, text_act, sample_act = _activation_peaks(
        key, dtype, batch, (a.height, a.width), a.gradient_checkpointing, train_text,
        max(s.batch_size, r.batch_size), (max(s.height, r.height), max(s.width, r.width)),
        max(s.guidance, r.guidance) > 1, s.init_strength is not None)

    resident = {"base pipeline weights": (unet_n + vae_n + text_n) * weight,
                f"resident adapters ({cache})": cache * adapter_bytes,
                "CUDA context": CUDA_CONTEXT_BYTES}
    plan = MemoryPlan(a.mode, dtype, arch.source)
    plan.training = {**resident,
                     ("fp32 UNet copy + gradients" if a.mode == "dreambooth" else "fp32 LoRA + gradients"):
                         trained * TRAINED_BYTES,
                     f"optimiser states ({a.optimizer})": trained * adam,
                     "activations, training step" + (" (checkpointed)" if a.gradient_checkpointing else ""):
                         unet_act + text_act}
    plan.sampling = {**resident, "activations, sampling": sample_act}
    return plan


def format_memory(plan: MemoryPlan, gpus: tuple[float, ...] = (24, 80)) -> str:
    lines = [f"GPU memory of one generator ({plan.mode}, {plan.dtype} weights; model: {plan.architecture}):", "",
             "| part | training GB | sampling GB |", "|---|---:|---:|"]
    for part in dict.fromkeys([*plan.training, *plan.sampling]):
        t, s = plan.training.get(part), plan.sampling.get(part)
        lines.append(f"| {part} | {'' if t is None else f'{t / GIB:.2f}'} | {'' if s is None else f'{s / GIB:.2f}'} |")
    lines.append(f"| **total** | **{plan.training_bytes / GIB:.2f}** | **{plan.sampling_bytes / GIB:.2f}** |")
    verdicts = [f"{g:g} GB: {'fits' if plan.fits(g) else 'does not fit'}" for g in gpus]
    lines += ["", f"Peak {plan.peak_bytes / GIB:.1f} GB, planned to {HEADROOM:.0%} of the card: " + "; ".join(verdicts)]
    return "\n".join(lines)


def advice(plan: MemoryPlan, cfg) -> list[str]:
    """Changes that lower the peak, largest first, that the config has not made yet."""
    a = cfg.adapter
    tips = []
    if plan.dtype == "fp32":
        tips.append("runtime.dtype: bf16 (or fp16) halves the weights and activations")
    if not a.gradient_checkpointing and plan.training_bytes >= plan.sampling_bytes:
        tips.append("adapter.gradient_checkpointing: true cuts training activations ~3x for ~30% more time")
    if a.optimizer == "adamw" and a.mode == "dreambooth":
        tips.append("adapter.optimizer: adamw8bit stores Adam's moments in 8 bits (bitsandbytes): -6 GB for SD-1.5")
    if a.instance_batch_size + a.prior_batch_size > 2:
        tips.append("adapter.instance_batch_size / prior_batch_size: a smaller batch")
    if plan.sampling_bytes > plan.training_bytes:
        tips.append("sampler.batch_size / refset.batch_size: fewer images per pipeline call")
    if "ray" in type(cfg).model_fields and cfg.ray.adapter_cache > 1 and a.mode == "dreambooth":
        tips.append("ray.adapter_cache: each resident DreamBooth adapter is a whole UNet")
    return tips


def check_fits(plan: MemoryPlan, gpu_gib: float, cfg=None, where: str = "runtime.gpu_memory_gb") -> None:
    """ConfigError when the plan's peak exceeds ``gpu_gib`` (to the planning headroom), naming what to change."""
    if plan.fits(gpu_gib):
        return
    tips = advice(plan, cfg) if cfg is not None else []
    raise ConfigError(
        f"this build needs about {plan.peak_bytes / GIB:.1f} GB per generator "
        f"(training {plan.training_bytes / GIB:.1f} GB, sampling {plan.sampling_bytes / GIB:.1f} GB) but {where} "
        f"gives {gpu_gib:g} GB (planned to {HEADROOM:.0%}); " + ("try: " + "; ".join(tips) if tips else
                                                                "use a larger GPU")
        + ". `diffreid plan --config FILE` prints the breakdown.")


def device_memory_gib(device) -> float | None:
    """Total memory of a CUDA ``device`` (None on other devices)."""
    import torch

    if getattr(device, "type", device) != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / GIB


def ensure_fits(cfg, model_path: str, device=None) -> MemoryPlan | None:
    """Before a generator starts work: the plan against ``runtime.gpu_memory_gb`` or, on CUDA, the card's own
    memory; None where there is nothing to check (CPU without a declared GPU, the tiny test model)."""
    from diffreid.models.assets import TINY_MODEL

    declared = cfg.runtime.gpu_memory_gb
    capacity = declared or (device_memory_gib(device) if device is not None else None)
    if capacity is None or cfg.base_model.path == TINY_MODEL:
        return None
    plan = plan_memory(cfg, model_path)
    check_fits(plan, capacity, cfg, "runtime.gpu_memory_gb" if declared else f"this GPU ({device})")
    return plan
