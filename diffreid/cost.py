"""What a build costs before it runs: GPU-seconds and storage per identity and in total, for a BuildConfig.

Compute comes from a measured GPU table (``benchmarks/gpu_check.py`` writes ``GPU-RESULTS.json``) when one is
given, else from FLOP counts of the SD-1.5 architecture (counted by torch's FlopCounterMode on the meta
device: exact for the model, no memory) at an assumed sustained GPU throughput, labelled as an estimate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

JPEG_BYTES_PER_KEPT_IMAGE = 12_000  # a 256x128 JPEG at quality 95
PAPER_GPU_S_PER_ID = 3 * 24 * 3600 * 8 / 5000  # 5k identities in 3 days on 8x RTX 4090


@dataclass(frozen=True)
class Assumptions:
    gpu_tflops: float = 165.0  # RTX 4090 dense bf16 with fp32 accumulate
    utilisation: float = 0.35  # sustained share of that peak in diffusion UNet inference/training


@lru_cache(maxsize=8)
def sd15_flops(height: int, width: int) -> dict[str, float]:
    """Forward FLOPs of one UNet call and one VAE decode / encode at ``height`` x ``width`` (batch 1)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from diffreid.models.random import SD15

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD15["unet"]), AutoencoderKL(**SD15["vae"])
        latent = torch.empty(1, 4, height // 8, width // 8)
        counts = {}
        with FlopCounterMode(display=False) as fc:
            unet(latent, torch.tensor([10]), encoder_hidden_states=torch.empty(1, 77, 768))
        counts["unet"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.decode(latent)
        counts["vae_decode"] = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            vae.encode(torch.empty(1, 3, height, width))
        counts["vae_encode"] = fc.get_total_flops()
        counts["unet_params"] = sum(p.numel() for p in unet.parameters())
    return counts


def lora_params(rank: int, target_modules: list[str]) -> int:
    """Parameters of a rank-``rank`` LoRA on the SD-1.5 UNet's ``target_modules`` linear layers."""
    import torch
    from diffusers import UNet2DConditionModel

    from diffreid.memory import lora_param_count
    from diffreid.models.random import SD15

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15["unet"])
    return lora_param_count(unet, rank, target_modules)


def plan_build(cfg, identities: int, gpu_results: str | Path | None = None,
               assume: Assumptions = Assumptions()) -> dict:
    """GPU-seconds and bytes per identity (by part) and in total for ``identities`` identities."""
    flops = sd15_flops(cfg.sampler.height, cfg.sampler.width)
    a, s, r = cfg.adapter, cfg.sampler, cfg.refset
    cfg_factor = 2 if s.guidance > 1 else 1  # classifier-free guidance doubles the UNet batch
    per_id_flops = {
        "reference set": (r.num_images * (r.steps * cfg_factor * flops["unet"] + flops["vae_decode"])
                          / (identities if r.share_across_identities else 1)),
        "adapter training": a.resolved_steps * (a.instance_batch_size + a.prior_batch_size) * flops["unet"]
                            * (3 if a.mode == "dreambooth" else 2),  # backward: + weight grads only for DreamBooth
        "sampling": s.num_images * (s.steps * cfg_factor * flops["unet"] + flops["vae_decode"]),
    }
    measured = json.loads(Path(gpu_results).read_text()) if gpu_results else None
    if measured:
        source = f"measured ({gpu_results})"
        image_steps_per_s = max(measured["images_per_s"].values()) * measured["steps"]
        train_batch = measured["train_batch"]
        steps_per_s = measured["train_steps_per_s"][a.mode if a.mode in measured["train_steps_per_s"] else "lora"]
        seconds = {"reference set": r.num_images * r.steps / image_steps_per_s
                   / (identities if r.share_across_identities else 1),
                   "adapter training": a.resolved_steps * (a.instance_batch_size + a.prior_batch_size) / train_batch
                   / steps_per_s,
                   "sampling": s.num_images * s.steps / image_steps_per_s}
    else:
        source = (f"estimate from FLOPs at {assume.gpu_tflops:g} TFLOP/s x {assume.utilisation:.0%} sustained "
                  "(no measured GPU table)")
        rate = assume.gpu_tflops * 1e12 * assume.utilisation
        seconds = {k: v / rate for k, v in per_id_flops.items()}
    if a.mode == "dreambooth":
        adapter_bytes = flops["unet_params"] * 2  # a full UNet in 16-bit
    else:
        adapter_bytes = lora_params(a.rank, list(a.target_modules)) * 4
    kept = s.num_images * 0.8
    per_id_bytes = {"adapter": adapter_bytes, "kept images": kept * JPEG_BYTES_PER_KEPT_IMAGE}
    per_id_s = sum(seconds.values())
    return {"identities": identities, "source": source, "seconds_per_identity": seconds,
            "gpu_s_per_identity": per_id_s, "gpu_hours": per_id_s * identities / 3600,
            "bytes_per_identity": per_id_bytes, "total_bytes": sum(per_id_bytes.values()) * identities,
            "tflop_per_identity": {k: v / 1e12 for k, v in per_id_flops.items()},
            "paper_gpu_s_per_identity": PAPER_GPU_S_PER_ID}


def format_plan(plan: dict, mode: str) -> str:
    lines = [f"Cost of this build ({mode}), {plan['identities']} identities — {plan['source']}:", "",
             "| part | TFLOP per identity | GPU-s per identity |", "|---|---:|---:|"]
    for part, sec in plan["seconds_per_identity"].items():
        lines.append(f"| {part} | {plan['tflop_per_identity'][part]:.0f} | {sec:.1f} |")
    lines += [f"| **total** | {sum(plan['tflop_per_identity'].values()):.0f} | **{plan['gpu_s_per_identity']:.1f}** |",
              "", f"GPU-hours for all identities: {plan['gpu_hours']:.1f} "
              f"(the paper: ~{plan['paper_gpu_s_per_identity']:.0f} GPU-s per identity).",
              "Storage per identity: " + ", ".join(f"{k} {v / 2**20:.1f} MB" for k, v in plan["bytes_per_identity"].items())
              + f"; total {plan['total_bytes'] / 2**30:.1f} GB."]
    return "\n".join(lines)
