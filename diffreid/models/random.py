"""An SD-1.5-shaped pipeline with random weights, built offline from configs: the honest stand-in for the real
model's speed and memory (UNet 860 M, VAE 84 M, CLIP ViT-L/14 text encoder 123 M parameters) where no weights
can be downloaded. It draws noise; everything else (shapes, FLOPs, memory, file sizes) is the real model's.

The tokenizer is CLIP's own 49,408-token BPE vocabulary when open-clip-torch is installed (it ships
``bpe_simple_vocab_16e6.txt.gz``), else the byte-level vocabulary of the tiny pipeline (same embedding size).
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from diffreid.io import atomic_dir, atomic_write_json
from diffreid.models.tiny import BOS, EOS, build_tokenizer, byte_unicode_map, is_complete_pipeline_folder

SD15 = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4),
    "text": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768),
}
ARCHES = {"sd15": SD15}
BUILD_RECORD = "diffreid_random.json"
CLIP_MERGES = 49152 - 256 - 2  # CLIP's vocabulary: 512 byte tokens + 48,894 merges + 2 specials = 49,408


def clip_bpe_file() -> Path | None:
    """open-clip-torch's copy of CLIP's BPE merges, when the package is installed."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    return path if path.is_file() else None


def write_clip_tokenizer(bpe_gz: Path, out_dir: Path):
    """A ``CLIPTokenizer`` over CLIP's real vocabulary, written from the BPE merges file."""
    from transformers import CLIPTokenizer

    lines = gzip.open(bpe_gz, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:1 + CLIP_MERGES]
    chars = list(byte_unicode_map().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(out_dir, local_files_only=True, model_max_length=77)


def build_random_pipeline(out_dir, arch: str = "sd15", seed: int = 0) -> Path:
    """Write an ``arch``-shaped pipeline with seeded random weights (diffusers layout, safetensors) to
    ``out_dir``; a complete folder built with the same arguments is reused."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in ARCHES:
        raise ValueError(f"arch {arch!r}: expected one of {sorted(ARCHES)}")
    spec, out = ARCHES[arch], Path(out_dir)
    bpe = clip_bpe_file()
    record = {"arch": arch, "seed": seed, "vocabulary": "clip-49408" if bpe else "byte-level"}
    if is_complete_pipeline_folder(out):
        existing = out / BUILD_RECORD
        if existing.is_file() and json.loads(existing.read_text()) != record:
            raise ValueError(f"{out} holds a pipeline built with other settings ({existing.name}); remove it or "
                             "choose another --out folder")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a complete diffusers pipeline folder; remove it or choose "
                         "another folder")
    with atomic_dir(out) as tmp:
        src = tmp / "_tokenizer_src"
        tokenizer = write_clip_tokenizer(bpe, src) if bpe else build_tokenizer(src)
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**spec["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**spec["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**spec["text"], bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id))
        scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        pipe = StableDiffusionPipeline(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(tmp, safe_serialization=True)
        shutil.rmtree(src)
        atomic_write_json(tmp / BUILD_RECORD, record)
    return out
