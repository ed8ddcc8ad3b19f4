"""A tiny Stable-Diffusion-1.x pipeline built from configs, saved in the standard diffusers layout.

Tests and the demo load it through the same ``from_pretrained`` path as a real model. Its weights are
random (seeded): it runs every code path in well under a second on a CPU, it does not draw people.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffreid.io import atomic_dir, atomic_write_json

TINY_CONFIG = {
    # latent 4 x 32 x 16 for a 64 x 32 image: the VAE has 2 blocks, so it downsamples by 2
    "vae_block_out_channels": (32, 64),
    "vae_scale_factor": 2,
    "latent_channels": 4,
    "unet_block_out_channels": (32, 64),
    "unet_layers_per_block": 2,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "text_hidden_size": 32,
    "text_layers": 2,
    "text_heads": 4,
    "text_intermediate_size": 37,
    "max_length": 77,
    # whole-word tokens: identity tokens and prompt words become one token each (the rest splits into bytes)
    "words": ("sks", "xjq", "zwv", "qlt", "a", "photo", "of", "person", "walking", "standing", "the", "with",
              "in", "and", "wearing", "shirt", "trousers", "bag", "red", "blue", "green", "black", "white"),
}
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
BUILD_RECORD = "diffreid_tiny.json"
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder")


def byte_unicode_map() -> dict[int, str]:
    """The reversible byte -> printable-character map that byte-level BPE vocabularies use."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def bpe_pieces(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: merge the adjacent pair of lowest rank until none applies."""
    pieces = list(symbols)
    while len(pieces) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(pieces, pieces[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def tiny_vocab(words=TINY_CONFIG["words"]) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style byte-level vocab (every byte, alone and word-final) plus merges that make each of ``words``
    a single token. Returns (vocab, merges).

    A word's merges are appended after every earlier one: its existing pieces (under the merges so far) are
    joined left to right, so a merge another word added first (``l o`` of ``long`` inside ``yellow``) cannot
    split it. Later merges never fire inside an earlier word, which is one token by then."""
    chars = list(byte_unicode_map().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = [byte_unicode_map()[b] for b in word.lower().encode()]
        if len(symbols) < 2:
            continue
        symbols[-1] += "</w>"
        pieces = bpe_pieces(symbols, ranks)
        prefix = pieces[0]
        for piece in pieces[1:]:
            ranks[(prefix, piece)] = len(merges)
            merges.append(f"{prefix} {piece}")
            prefix += piece
            tokens.append(prefix)
    tokens += [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def build_tokenizer(folder: Path, words=TINY_CONFIG["words"]):
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocab(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True,
                                         model_max_length=TINY_CONFIG["max_length"])


def build_components(tokenizer, *, seed: int, sample_height: int, sample_width: int) -> dict:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    c = TINY_CONFIG
    factor = c["vae_scale_factor"]
    if sample_height % factor or sample_width % factor:
        raise ValueError(f"sample_height/sample_width must be divisible by the VAE factor {factor}, "
                         f"got {sample_height}x{sample_width}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=(sample_height // factor, sample_width // factor),
        in_channels=c["latent_channels"], out_channels=c["latent_channels"],
        block_out_channels=c["unet_block_out_channels"], layers_per_block=c["unet_layers_per_block"],
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=c["cross_attention_dim"], attention_head_dim=c["attention_head_dim"],
        norm_num_groups=32,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=c["latent_channels"],
        block_out_channels=c["vae_block_out_channels"],
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=32, sample_size=max(sample_height, sample_width),
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=c["text_hidden_size"],
        intermediate_size=c["text_intermediate_size"], num_hidden_layers=c["text_layers"],
        num_attention_heads=c["text_heads"], max_position_embeddings=c["max_length"], projection_dim=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def is_complete_pipeline_folder(folder: Path) -> bool:
    if not (folder / "model_index.json").is_file():
        return False
    if not all((folder / name).is_dir() for name in COMPONENTS):
        return False
    return all(any((folder / name).glob("*.safetensors")) for name in WEIGHTED)


def build_tiny_pipeline(out_dir, *, seed: int = 0, sample_height: int = 64, sample_width: int = 32) -> Path:
    """Build (or reuse) a tiny SD-1.x pipeline folder at ``out_dir`` and return its path.

    The folder is written in a temp folder beside the target and renamed into place, so a crash never
    leaves a half-written pipeline. A complete existing folder is reused when it was built with the same
    arguments; one built with other arguments is an error (choose another folder)."""
    from diffusers import StableDiffusionPipeline

    out = Path(out_dir)
    record = {"seed": seed, "sample_height": sample_height, "sample_width": sample_width,
              "config": json.loads(json.dumps(TINY_CONFIG))}
    if is_complete_pipeline_folder(out):
        existing = out / BUILD_RECORD
        if existing.is_file() and json.loads(existing.read_text()) != record:
            raise ValueError(f"{out} holds a tiny pipeline built with other settings "
                             f"({existing.name}); remove it or choose another --out folder")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a complete diffusers pipeline folder; "
                         "remove it or choose another folder")
    with atomic_dir(out) as tmp:
        tokenizer = build_tokenizer(tmp / "_tokenizer_src")
        pipe = StableDiffusionPipeline(**build_components(tokenizer, seed=seed, sample_height=sample_height,
                                                          sample_width=sample_width),
                                       safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        shutil.rmtree(tmp / "_tokenizer_src")
        pipe.save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(tmp / BUILD_RECORD, record)
    return out
