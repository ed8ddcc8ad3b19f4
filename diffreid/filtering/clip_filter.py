"""CLIP filter: zero-shot "is this a person?" confidence from a local CLIPModel.

score = Σ over positive prompts of softmax(CLIP logits over positive + negative prompts). It checks the
category, not the identity (paper §3.2), so the claimed pid is accepted for the shared call and unused.
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from diffreid.filtering.base import FilterConfig, FilterError, FilterScores, check_batch, model_key
from diffreid.filtering.gallery import replace_folder

TINY_CLIP_WORDS = ("a", "photo", "of", "person", "an", "empty", "street", "building", "random", "noise",
                   "blurry", "abstract", "pattern")
TINY_CLIP_RECORD = "diffreid_tiny_clip.json"
TINY_CLIP_DIR = "tiny-clip"


def pad_to_square(image: Image.Image) -> Image.Image:
    side = max(image.size)
    canvas = Image.new("RGB", (side, side), (0, 0, 0))
    canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return canvas


@functools.lru_cache(maxsize=2)
def _loaded_clip(folder: str, key: str, device, dtype):
    """One eval-mode CLIPModel + CLIPProcessor per folder state, device and dtype in a process (read only, so
    every CLIPFilter built from the folder shares it)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device).eval()
    return model, CLIPProcessor.from_pretrained(folder, local_files_only=True)


class CLIPFilter:
    name = "clip"

    def __init__(self, model_dir: str | Path, *, positive_prompts: Sequence[str] = ("a photo of a person",),
                 negative_prompts: Sequence[str] = ("a photo of an empty street", "random noise"),
                 threshold: float = 0.5, pad_square: bool = True, batch_size: int = 64, device=None,
                 dtype=None):
        import torch

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FilterError(f"clip_model_dir {model_dir}: expected a CLIPModel folder saved by "
                              "save_pretrained (config.json, weights, processor files)")
        if not positive_prompts or not negative_prompts:
            raise FilterError("CLIP filter needs at least one positive and one negative prompt")
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.float32
        self.model, self.processor = _loaded_clip(str(model_dir.resolve()), model_key(model_dir), self.device,
                                                  self.dtype)
        self.prompts = [*positive_prompts, *negative_prompts]
        self.num_positive = len(positive_prompts)
        self.threshold = float(threshold)
        self.pad_square = pad_square
        self.batch_size = batch_size
        self._text = None

    def text_inputs(self) -> dict:
        if self._text is None:
            tokens = self.processor.tokenizer(self.prompts, padding=True, return_tensors="pt")
            self._text = {k: v.to(self.device) for k, v in tokens.items()}
        return self._text

    def score(self, images: Sequence[Image.Image], claimed_pids: Sequence[int]) -> FilterScores:
        import torch

        check_batch(images, claimed_pids)
        out = []
        for start in range(0, len(images), self.batch_size):
            batch = [im.convert("RGB") for im in images[start:start + self.batch_size]]
            if self.pad_square:
                batch = [pad_to_square(im) for im in batch]
            pixels = self.processor.image_processor(batch, return_tensors="pt")["pixel_values"]
            with torch.no_grad():
                logits = self.model(**self.text_inputs(),
                                    pixel_values=pixels.to(self.device, self.dtype)).logits_per_image
            probs = logits.float().softmax(dim=1)[:, :self.num_positive].sum(dim=1)
            out.append(probs.cpu().numpy())
        scores = np.concatenate(out) if out else np.zeros(0, np.float32)
        return FilterScores.from_scores(scores, self.threshold)


def clip_model_path(cfg: FilterConfig, out_dir: str | Path, tiny: bool) -> str | None:
    """The CLIP folder of the enabled filters, by the toy-fallback convention of the base model
    (``diffreid.build.base_model_path``): ``cfg.clip_model_dir`` when set; else, with ``tiny``, the tiny CLIP
    built into OUT/models/tiny-clip (once); else None (``build_filters`` then names the missing field)."""
    if cfg.clip_model_dir or "clip" not in cfg.filters or not tiny:
        return cfg.clip_model_dir
    return str(build_tiny_clip(Path(out_dir) / "models" / TINY_CLIP_DIR))


def build_tiny_clip(out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel (hidden 32, 2 layers, 32 px images) + CLIPProcessor saved at ``out_dir``,
    loadable with ``from_pretrained(local_files_only=True)``. Its scores are meaningless: it exists so
    tests and the toy pipeline run the real loading and scoring path offline. Reused when already built
    with the same seed."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from diffreid.models.tiny import build_tokenizer

    out = Path(out_dir)
    record = {"seed": seed, "words": list(TINY_CLIP_WORDS)}
    if (out / TINY_CLIP_RECORD).is_file() and json.loads((out / TINY_CLIP_RECORD).read_text()) == record:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tokenizer = build_tokenizer(tmp / "_tokenizer_src", words=TINY_CLIP_WORDS)
        shutil.rmtree(tmp / "_tokenizer_src")
        text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
        torch.manual_seed(seed)
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        model.save_pretrained(tmp, safe_serialization=True)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(tmp)
        (tmp / TINY_CLIP_RECORD).write_text(json.dumps(record) + "\n")
        replace_folder(tmp, out, TINY_CLIP_RECORD)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
