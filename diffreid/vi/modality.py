"""DiVE's modality adapter: one LoRA shared by all identities learns the modality (from modality/camera words
in the prompt), one token per identity learns the person. Trained jointly over the VI dataset's identities
(both modalities) and the RGB identities to expand (visible only); sampling then asks for an RGB-only
person's token with the infrared word.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from diffreid.config import ConfigError
from diffreid.data.types import ImageRecord
from diffreid.generation.adapters import AdapterConfig, AdapterResult
from diffreid.generation.prompts import LPEConfig
from diffreid.generation.sampler import GeneratedImage, SamplerConfig, sample_mixed


@dataclass(frozen=True)
class PromptMaker:
    template: str
    modality_words: dict[str, str]
    camera_words: bool
    captions: dict[int, str] = field(default_factory=dict)  # pid -> LPE caption of its visible images

    def __call__(self, token: str, modality: str, cam: int | None = None, pid: int | None = None) -> str:
        """``cam`` is a 1-based camera of the VI dataset (None for images of the RGB dataset); ``pid`` picks the
        identity's caption, appended after a comma when the config gives captions."""
        word = self.modality_words[modality]
        if self.camera_words and cam is not None:
            word = f"{word} cam{cam}"
        text = self.template.format(modality=word, token=token)
        caption = self.captions.get(pid, "")
        return " ".join(f"{text}, {caption}".split()) if caption else " ".join(text.split())


@dataclass(frozen=True)
class TrainImage:
    path: str
    pid: int  # the token's pid: the VI dataset's own id, or the new pid of an RGB identity
    prompt: str


def thin(records: Sequence[ImageRecord], limit: int) -> list[ImageRecord]:
    """At most ``limit`` records, evenly spread over the (path-ordered) list."""
    records = sorted(records, key=lambda r: r.path)
    if len(records) <= limit:
        return records
    step = len(records) / limit
    return [records[int(i * step)] for i in range(limit)]


def identity_captions(cfg: LPEConfig, visible: dict[int, Sequence[ImageRecord]], cache_dir: str | Path
                      ) -> dict[int, str]:
    """LPE's caption of every identity (pid -> its visible records), cached per pid under ``cache_dir``."""
    from diffreid.generation.prompts import build_captioner, caption_identity, caption_images

    captioner = build_captioner(cfg)
    out = {}
    for pid, recs in sorted(visible.items()):
        sequences: dict[int, list[ImageRecord]] = {}
        for r in sorted(recs, key=lambda r: r.path):
            sequences.setdefault(r.camid, []).append(r)
        paths = [r.path for r in caption_images(sequences, cfg)]
        out[pid] = caption_identity(captioner, paths, cache_dir, pid, max_phrases=cfg.max_phrases)
    return out


def training_images(vi_records: Sequence[ImageRecord], rgb_records: dict[int, Sequence[ImageRecord]],
                    cfg: AdapterConfig, prompt: PromptMaker, per_id: int) -> list[TrainImage]:
    """The modality adapter's training set: each VI identity's images per modality (camera word from its
    own camera) and each RGB identity's visible images (``rgb_records``: new pid -> its source records)."""
    out: list[TrainImage] = []
    groups: dict[tuple[int, str], list[ImageRecord]] = {}
    for r in vi_records:
        groups.setdefault((r.pid, r.modality), []).append(r)
    for (pid, modality), recs in sorted(groups.items()):
        out += [TrainImage(r.path, pid, prompt(cfg.token(pid), modality, r.camid + 1, pid)) for r in thin(recs, per_id)]
    for pid, recs in sorted(rgb_records.items()):
        out += [TrainImage(r.path, pid, prompt(cfg.token(pid), "rgb", pid=pid)) for r in thin(recs, per_id)]
    return out


def train_modality_adapter(pipe, images: Sequence[TrainImage], cfg: AdapterConfig, out_dir: str | Path,
                           name: str = "modality", on_step=None) -> AdapterResult:
    """Train the shared LoRA + one token per pid on ``images``, each with its own prompt (its modality and
    camera words). Resumable and idempotent like every adapter run."""
    from diffreid.generation.adapters import train_shared_lora_ti_per_image

    if cfg.mode != "shared_lora_ti":
        raise ConfigError(f"adapter.mode={cfg.mode!r}: the modality adapter needs shared_lora_ti")
    if not images:
        raise ConfigError("the modality adapter has no training images")
    return train_shared_lora_ti_per_image(pipe, [im.path for im in images], [im.prompt for im in images],
                                          [im.pid for im in images], cfg, out_dir, adapter_name=name, on_step=on_step)


def generate(pipe, adapter: str, pids: Sequence[int], tokens: dict[int, str], modality: str, cams: Sequence[int],
             per_id: int, sampler: SamplerConfig, prompt: PromptMaker,
             start_index: int = 0, init_images: dict[int, Sequence[str]] | None = None
             ) -> dict[int, list[tuple[GeneratedImage, int]]]:
    """``per_id`` images of ``modality`` for every pid, spread round-robin over ``cams`` (1-based), as
    (image, camera) pairs. Each camera's prompts form one mixed-identity sampling run; image indices
    (hence seeds) run from ``start_index`` without overlap across cameras. ``init_images`` (pid -> its
    visible crops) start image-to-image sampling when ``sampler.init_strength`` is set."""
    out: dict[int, list[tuple[GeneratedImage, int]]] = {pid: [] for pid in pids}
    offset = start_index
    for slot, cam in enumerate(cams):
        count = len(range(slot, per_id, len(cams)))
        if count == 0:
            continue
        items = [(pid, prompt(tokens[pid], modality, cam, pid)) for pid in pids]
        images = sample_mixed(pipe, items, sampler.model_copy(update={"num_images": count}), adapter=adapter,
                              start_index=offset, init_images=init_images)
        for g in images:
            out[g.record["pid"]].append((g, cam))
        offset += count
    return out
