"""LPE — Language Prompts Enhancement (paper §3.1).

An identity's same-camera image sequence is captioned, the captions are merged into one enhanced
description, and the identity token (IIR) is placed in the prompt. The reference-set prompt is the same
prompt without the token.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from pydantic import Field, field_validator, model_validator

from diffreid.config import ConfigError, RuntimeConfig, StageConfig
from diffreid.generation.captioners import PERSON_QUESTION, Blip2Captioner, Captioner, TemplateCaptioner
from diffreid.io import atomic_write_json

PHRASE_SPLIT = re.compile(r"\s*(?:[,;.!?]|\band\b|\bwhile\b)\s*", re.IGNORECASE)
ARTICLE = re.compile(r"^(?:a|an|the)\s+")
SAFE_ID = re.compile(r"^[\w.-]+$")


class LPEConfig(StageConfig):
    captioner: Literal["template", "blip2", "toy"] = Field(
        "template", description="template needs no weights; blip2 is the paper's choice when weights exist; "
                                "toy reads the toy world's attributes from pixels")
    model_path: str = Field("", description="BLIP-2 folder or hub id (blip2); toy: default diffreid:toy-captioner")
    template_caption: str = Field("a person walking", description="what the template captioner says")
    question: str = Field(PERSON_QUESTION, description="steers BLIP-2 to clothing, carried items and action")
    max_new_tokens: int = Field(40, gt=0, description="a BLIP-2 answer of a sentence or two")
    caption_batch_size: int = Field(8, gt=0, description="images per BLIP-2 forward pass")
    token: str = Field("sks", description="rare word used as the identity token (IIR), as in DreamBooth")
    identity_template: str = Field("a photo of {token} person, {caption}",
                                   description="identity prompt: the IIR token beside the class word")
    reference_template: str = Field("a photo of person, {caption}",
                                    description="the same prompt without the token, for the reference set")
    use_identity_token: bool = Field(True, description="false = ablation: the identity prompt is the reference "
                                     "prompt (no IIR token), so an adapter must bind the identity to the caption alone")
    max_images: int = Field(8, gt=0, description="images captioned per sequence: enough to vote, cheap on CPU")
    caption_scope: Literal["sequence", "identity"] = Field(
        "sequence", description="sequence = the paper's same-camera sequence; identity = images from every camera, "
                                "so one camera's colour cast is outvoted (toy world: caption right for 81% vs 69% "
                                "of identities)")
    max_phrases: int = Field(6, gt=0, description="phrases kept in the merged caption (CLIP reads 77 tokens)")
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig, description="device, dtype, seed")

    @field_validator("token")
    @classmethod
    def token_is_one_word(cls, v: str) -> str:
        if not v or any(ch.isspace() for ch in v):
            raise ValueError("the identity token must be one non-empty word")
        return v

    @model_validator(mode="after")
    def templates_fit(self) -> "LPEConfig":
        check_templates(self.identity_template, self.reference_template)
        if self.captioner == "blip2" and not self.model_path:
            raise ValueError("captioner=blip2 needs model_path (a local BLIP-2 folder or hub id)")
        return self


def check_templates(identity_template: str, reference_template: str) -> None:
    if "{token}" not in identity_template or "{caption}" not in identity_template:
        raise ValueError(f"identity_template {identity_template!r} must contain {{token}} and {{caption}}")
    if "{token}" in reference_template or "{caption}" not in reference_template:
        raise ValueError(f"reference_template {reference_template!r} must contain {{caption}} and no {{token}}")


def build_captioner(cfg: LPEConfig) -> Captioner:
    if cfg.captioner == "template":
        return TemplateCaptioner(cfg.template_caption)
    if cfg.captioner == "blip2":
        return Blip2Captioner(cfg.model_path, cfg.runtime, prompt=cfg.question, max_new_tokens=cfg.max_new_tokens,
                              batch_size=cfg.caption_batch_size)
    from diffreid.generation.toy_captioner import ToyCaptioner
    from diffreid.models.assets import resolve_model_path

    try:
        return ToyCaptioner(resolve_model_path(cfg.model_path or "diffreid:toy-captioner"), cfg.runtime,
                            batch_size=max(cfg.caption_batch_size, 64))
    except FileNotFoundError as err:
        raise ConfigError(f"lpe.model_path: {err}") from None


def phrase_key(phrase: str) -> str:
    return ARTICLE.sub("", " ".join(phrase.lower().split()))


def merge_captions(captions: Sequence[str], max_phrases: int = 6) -> str:
    """Merge a sequence's captions into one description.

    Rule: each caption is split into phrases at punctuation and at 'and'/'while'; phrases are compared
    case- and space-insensitively with a leading article ignored; a phrase counts once per caption. The
    ``max_phrases`` phrases found in the most captions are kept (ties: the earlier first appearance wins)
    and written in order of first appearance, each in its first-seen wording, joined by ', '.
    """
    if max_phrases <= 0:
        raise ValueError(f"max_phrases must be > 0, got {max_phrases}")
    counts: Counter[str] = Counter()
    first_seen: dict[str, tuple[int, str]] = {}
    for caption in captions:
        keys_here = set()
        for raw in PHRASE_SPLIT.split(caption):
            phrase = " ".join(raw.split())
            key = phrase_key(phrase)
            if not key or key in keys_here:
                continue
            keys_here.add(key)
            counts[key] += 1
            first_seen.setdefault(key, (len(first_seen), phrase))
    ranked = sorted(counts, key=lambda k: (-counts[k], first_seen[k][0]))[:max_phrases]
    return ", ".join(first_seen[k][1] for k in sorted(ranked, key=lambda k: first_seen[k][0]))


@dataclass(frozen=True)
class IdentityPrompts:
    identity: str  # with the IIR token: the adapter's training and sampling prompt
    reference: str  # the same without the token: the attribute reference set's prompt
    token: str
    caption: str


def fill(template: str, **values: str) -> str:
    text = template.format(**values)
    return re.sub(r"[\s,;]+$", "", " ".join(text.split()))


def make_identity_prompts(caption: str, token: str = "sks", template: str = "a photo of {token} person, {caption}",
                          class_template: str = "a photo of person, {caption}") -> IdentityPrompts:
    check_templates(template, class_template)
    caption = " ".join(caption.split())
    return IdentityPrompts(identity=fill(template, token=token, caption=caption),
                           reference=fill(class_template, caption=caption), token=token, caption=caption)


def prompts_from_config(caption: str, cfg: LPEConfig, token: str | None = None) -> IdentityPrompts:
    prompts = make_identity_prompts(caption, token or cfg.token, cfg.identity_template, cfg.reference_template)
    if not cfg.use_identity_token:
        return IdentityPrompts(identity=prompts.reference, reference=prompts.reference, token="",
                               caption=prompts.caption)
    return prompts


def sequence_images(sequences: dict, max_images: int) -> list:
    """From camid -> ordered records, the longest same-camera sequence (lowest camid on ties), evenly
    thinned to at most ``max_images`` records, kept in order."""
    if not sequences:
        return []
    cam = max(sorted(sequences), key=lambda c: len(sequences[c]))
    records = list(sequences[cam])
    if len(records) <= max_images:
        return records
    step = len(records) / max_images
    return [records[int(i * step)] for i in range(max_images)]


def identity_images(sequences: dict, max_images: int) -> list:
    """From camid -> ordered records, up to ``max_images`` records spread over every camera: cameras in turn
    (lowest camid first), each camera's records evenly thinned."""
    per_cam = {cam: list(sequences[cam]) for cam in sorted(sequences)}
    picked: list = []
    while len(picked) < max_images and any(per_cam.values()):
        for cam, records in per_cam.items():
            if records and len(picked) < max_images:
                picked.append(records.pop(len(records) // 2))
    return picked


def caption_images(sequences: dict, cfg: LPEConfig) -> list:
    """The records LPE captions for one identity, by ``cfg.caption_scope``."""
    if cfg.caption_scope == "identity":
        return identity_images(sequences, cfg.max_images)
    return sequence_images(sequences, cfg.max_images)


def captioner_key(captioner: Captioner) -> str:
    if isinstance(captioner, TemplateCaptioner):
        return f"template:{captioner.template}"
    key = getattr(captioner, "cache_key", None)
    return key if key is not None else type(captioner).__qualname__


def caption_identity(captioner: Captioner, images: Sequence, cache_dir, pid, *, max_phrases: int = 6) -> str:
    """The merged caption of one identity, cached in ``cache_dir/<pid>.json``.

    ``images`` are PIL images or image paths (paths are opened only when the cache misses). The cache is
    reused when it was made by the same captioner from the same paths (or the same number of in-memory
    images) with the same ``max_phrases``; otherwise the images are captioned again and the file replaced.
    """
    from PIL import Image

    if not SAFE_ID.match(str(pid)):
        raise ValueError(f"pid {pid!r} cannot name a cache file: use letters, digits, '_', '-', '.'")
    if not images:
        raise ValueError(f"identity {pid}: no images to caption")
    paths = [str(x) for x in images if isinstance(x, (str, Path))]
    source = paths if len(paths) == len(images) else f"{len(images)} in-memory images"
    key = {"captioner": captioner_key(captioner), "source": source, "max_phrases": max_phrases}
    cache = Path(cache_dir) / f"{pid}.json"
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
        except json.JSONDecodeError:
            cached = {}
        if cached.get("key") == key and isinstance(cached.get("merged"), str):
            return cached["merged"]
    loaded = []
    for x in images:
        if isinstance(x, (str, Path)):
            with Image.open(x) as im:
                loaded.append(im.convert("RGB"))
        else:
            loaded.append(x)
    captions = list(captioner.caption(loaded))
    if len(captions) != len(loaded):
        raise ValueError(f"captioner returned {len(captions)} captions for {len(loaded)} images")
    merged = merge_captions(captions, max_phrases)
    atomic_write_json(cache, {"pid": str(pid), "key": key, "captions": captions, "merged": merged})
    return merged
