"""BoT-style Re-ID training ("Bag of Tricks", Luo et al. 2019): ID loss with label smoothing + batch-hard
triplet on a BNNeck model, PK batches, random erasing, warm-up then step (or cosine) LR.

``train_reid`` is also the fine-tuning step of the pre-training study: pass ``init_state`` (a backbone
state dict) or set ``model.pretrained_file`` to start from a pre-trained backbone.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch.utils.data import DataLoader, Dataset

from diffreid.config import ConfigError, RuntimeConfig, StageConfig
from diffreid.data.types import DatasetError, ImageRecord, relabel
from diffreid.io import atomic_write_json
from diffreid.reid.features import evaluate_reid, load_rgb
from diffreid.reid.model import ReIDModel, ReIDModelConfig, build_reid_model, save_reid_model
from diffreid.reid.sampler import PKSampler
from diffreid.reid.transforms import VisibleToInfrared, train_transform

__all__ = ["ReIDTrainConfig", "TrainResult", "train_reid", "evaluate_reid", "batch_hard_triplet_loss"]

log = logging.getLogger(__name__)


class ReIDTrainConfig(StageConfig):
    model: ReIDModelConfig = Field(default_factory=ReIDModelConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    height: int = Field(256, ge=16, description="BoT's 256x128 input: the standard 2:1 person crop")
    width: int = Field(128, ge=8, description="BoT's 256x128 input: the standard 2:1 person crop")
    P: int = Field(16, ge=1, description="BoT: 16 identities per batch")
    K: int = Field(4, ge=1, description="BoT: 4 images per identity, so every anchor has 3 positives")
    epochs: int = Field(120, ge=1, description="BoT's schedule length on Market-1501")
    iters_per_epoch: int | None = Field(None, ge=1, description="None = one pass over the training images "
                                        "(len // (P*K) batches); set it for tiny or huge datasets")
    optimizer: Literal["adam", "adamw", "sgd"] = Field("adam", description="BoT uses Adam")
    lr: float = Field(3.5e-4, gt=0, description="BoT's Adam learning rate")
    weight_decay: float = Field(5e-4, ge=0, description="BoT's weight decay")
    momentum: float = Field(0.9, ge=0, lt=1, description="only for sgd: the usual value")
    scheduler: Literal["step", "cosine"] = Field("step", description="BoT steps the LR down at milestones")
    milestones: list[int] = Field([40, 70], description="BoT: LR x gamma at epochs 40 and 70")
    gamma: float = Field(0.1, gt=0, le=1, description="BoT's step factor")
    warmup_epochs: float = Field(10, ge=0, description="BoT: 10 warm-up epochs protect pre-trained features")
    warmup_factor: float = Field(0.01, gt=0, le=1, description="BoT: warm-up starts at 1% of the LR")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="BoT: eps 0.1 stops over-confident IDs")
    triplet_margin: float = Field(0.3, ge=0, description="BoT's hard-triplet margin")
    triplet_soft_margin: bool = Field(False, description="softplus instead of a hinge: no margin to tune")
    id_loss_weight: float = Field(1.0, ge=0, description="BoT weighs both losses equally")
    triplet_loss_weight: float = Field(1.0, ge=0, description="BoT weighs both losses equally")
    flip_prob: float = Field(0.5, ge=0, le=1, description="people are left-right symmetric")
    pad: int = Field(10, ge=0, description="BoT: pad 10 px then random-crop back (for 256x128)")
    erasing_prob: float = Field(0.5, ge=0, le=1, description="BoT: random erasing against occlusion")
    num_workers: int = Field(4, ge=0, description="DataLoader processes decoding images; 0 = in-process")
    eval_batch_size: int = Field(128, ge=1, description="inference needs no gradients: larger is fine")
    eval_flip: bool = Field(False, description="BoT evaluates without flip averaging")
    # visible-infrared Re-ID (used when the training set holds both modalities; all off = plain BoT)
    modality_balanced: bool = Field(False, description="VI-ReID: an identity's K images split evenly over "
                                    "visible and infrared, so every batch has cross-modality positives")
    visible_grey_prob: float = Field(0.0, ge=0, le=1, description="VI-ReID: visible images turned grey-scale, "
                                     "so colour cannot carry identity where infrared has none")
    visible_channel_prob: float = Field(0.0, ge=0, le=1, description="VI-ReID (CAJ): one random colour channel "
                                        "copied to all three")
    cross_modality_triplet_weight: float = Field(0.0, ge=0, description="VI-ReID: batch-hard triplet whose "
                                                 "positives and negatives are in the anchor's other modality")

    @model_validator(mode="after")
    def check_consistency(self):
        if self.triplet_loss_weight > 0 and (self.P < 2 or self.K < 2):
            raise ValueError(f"P and K must be >= 2 for the triplet loss (got P={self.P}, K={self.K}); "
                             "or set triplet_loss_weight=0")
        if self.milestones != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {self.milestones}")
        if self.id_loss_weight == 0 and self.triplet_loss_weight == 0:
            raise ValueError("id_loss_weight and triplet_loss_weight are both 0: nothing to train")
        return self


@dataclass
class TrainResult:
    model: ReIDModel
    history: list[dict] = field(default_factory=list)
    label_pids: list[int] = field(default_factory=list)  # classifier label i <-> dataset pid


class RecordDataset(Dataset):
    """(image tensor, pid, modality: 0 visible / 1 infrared); ``visible_aug`` acts on visible images only."""

    def __init__(self, records: Sequence[ImageRecord], transform, visible_aug=None):
        self.records, self.transform, self.visible_aug = records, transform, visible_aug

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        rec = self.records[i]
        img = load_rgb(rec)
        if self.visible_aug is not None and rec.modality == "rgb":
            img = self.visible_aug(img)
        return self.transform(img), rec.pid, int(rec.modality == "ir")


def batch_hard_triplet_loss(feats: torch.Tensor, labels: torch.Tensor, margin: float,
                            soft_margin: bool = False, groups: torch.Tensor | None = None) -> torch.Tensor:
    """For each anchor: its farthest positive vs its closest negative (Euclidean distance).

    ``groups`` (e.g. modality per image): positives and negatives are taken only from the anchor's other
    groups (the cross-modality triplet of VI-ReID); anchors without such a positive and negative are skipped.
    """
    sq = feats.pow(2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2 * feats @ feats.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    allowed = torch.ones_like(same) if groups is None else groups[:, None] != groups[None, :]
    pos, neg = same & allowed, ~same & allowed
    hardest_pos = dist.masked_fill(~pos, float("-inf")).max(1).values
    hardest_neg = dist.masked_fill(~neg, float("inf")).min(1).values
    valid = pos.any(1) & neg.any(1)
    if not valid.any():
        return feats.sum() * 0.0
    gap = hardest_pos[valid] - hardest_neg[valid]
    if soft_margin:
        return F.softplus(gap).mean()
    return F.relu(gap + margin).mean()


def lr_factor(cfg: ReIDTrainConfig, epoch: float) -> float:
    """LR multiplier at a (fractional) epoch: linear warm-up, then step or cosine decay."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_factor + (1 - cfg.warmup_factor) * epoch / cfg.warmup_epochs
    if cfg.scheduler == "step":
        return cfg.gamma ** sum(1 for m in cfg.milestones if m <= int(epoch))
    span = max(cfg.epochs - cfg.warmup_epochs, 1e-8)
    return 0.5 * (1 + math.cos(math.pi * min((epoch - cfg.warmup_epochs) / span, 1.0)))


def make_optimizer(cfg: ReIDTrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_reid(cfg: ReIDTrainConfig, train_records: Sequence[ImageRecord], out_dir: str | Path | None = None,
               init_state: dict[str, torch.Tensor] | None = None, progress: bool = True,
               on_epoch_end: Callable[[dict, ReIDModel], None] | None = None) -> TrainResult:
    """Train a BoT Re-ID model on ``train_records`` and return it in eval mode with per-epoch history.

    ``init_state``: a backbone state dict to start from (fine-tuning). ``on_epoch_end(metrics, model)`` is
    called after each epoch (e.g. to report to Ray Train). With ``out_dir`` the model, resolved config and
    history are written there.
    """
    # 1. check inputs
    if not train_records:
        raise DatasetError("train_reid: the training split is empty")
    records, mapping = relabel(list(train_records))
    num_ids = len(mapping)
    if num_ids < cfg.P:
        raise ConfigError(f"P={cfg.P} identities per batch, but the training set has only {num_ids}: "
                          f"lower P")
    device, dtype = cfg.runtime.torch_device(), cfg.runtime.torch_dtype()
    seed_everything(cfg.runtime.seed)

    # 2. model
    model = build_reid_model(cfg.model, num_ids, (cfg.height, cfg.width))
    if init_state is not None:
        model.load_backbone_state(init_state)
    model.input_size = (cfg.height, cfg.width)
    model.label_pids = sorted(mapping, key=mapping.get)
    model.to(device).train()

    # 3. data: PK batches of augmented images
    transform = train_transform(cfg.height, cfg.width, model.pixel_mean, model.pixel_std,
                                flip_prob=cfg.flip_prob, pad=cfg.pad, erasing_prob=cfg.erasing_prob)
    modalities = [int(r.modality == "ir") for r in records]
    sampler = PKSampler([r.pid for r in records], cfg.P, cfg.K, seed=cfg.runtime.seed,
                        groups=modalities if cfg.modality_balanced else None)
    visible_aug = (VisibleToInfrared(cfg.visible_grey_prob, cfg.visible_channel_prob)
                   if cfg.visible_grey_prob or cfg.visible_channel_prob else None)
    loader = DataLoader(RecordDataset(records, transform, visible_aug), batch_sampler=sampler,
                        num_workers=cfg.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0,
                        generator=torch.Generator().manual_seed(cfg.runtime.seed))
    iters_per_epoch = cfg.iters_per_epoch or len(sampler)

    # 4. optimisation
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: lr_factor(cfg, it / iters_per_epoch))
    autocast = device.type == "cuda" and dtype != torch.float32
    scaler = torch.amp.GradScaler(device.type, enabled=autocast and dtype == torch.float16)

    # 5. loop
    history: list[dict] = []
    batches = endless(loader, sampler)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.epochs * iters_per_epoch, desc="train re-id", unit="it", disable=not progress)
    for epoch in range(cfg.epochs):
        sums = dict(loss=0.0, id_loss=0.0, triplet_loss=0.0, acc=0.0)
        if cfg.cross_modality_triplet_weight:
            sums["cross_modality_loss"] = 0.0
        t0 = time.time()
        for _ in range(iters_per_epoch):
            images, labels, groups = next(batches)
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                logits, global_feat = model(images)
            logits, global_feat = logits.float(), global_feat.float()
            id_loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            tri_loss = batch_hard_triplet_loss(global_feat, labels, cfg.triplet_margin, cfg.triplet_soft_margin)
            loss = cfg.id_loss_weight * id_loss + cfg.triplet_loss_weight * tri_loss
            if cfg.cross_modality_triplet_weight:
                cross = batch_hard_triplet_loss(global_feat, labels, cfg.triplet_margin, cfg.triplet_soft_margin,
                                                groups=groups.to(device))
                loss = loss + cfg.cross_modality_triplet_weight * cross
                sums["cross_modality_loss"] += cross.item()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"train_reid: loss became {loss.item()} at epoch {epoch + 1}; "
                                         "lower lr or use runtime.dtype=fp32")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            sums["loss"] += loss.item()
            sums["id_loss"] += id_loss.item()
            sums["triplet_loss"] += tri_loss.item()
            sums["acc"] += (logits.argmax(1) == labels).float().mean().item()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        metrics = {"epoch": epoch + 1, **{k: v / iters_per_epoch for k, v in sums.items()},
                   "lr": optimizer.param_groups[0]["lr"], "seconds": time.time() - t0}
        history.append(metrics)
        line = (f"epoch {epoch + 1}/{cfg.epochs}: loss {metrics['loss']:.4f} (id {metrics['id_loss']:.4f}, "
                f"triplet {metrics['triplet_loss']:.4f}) acc {metrics['acc']:.3f} lr {metrics['lr']:.2e}")
        log.info(line)
        if progress:
            bar.write(line)
        if on_epoch_end is not None:
            on_epoch_end(metrics, model)
            model.train()
    bar.close()
    model.eval()

    # 6. artifacts
    if out_dir is not None:
        save_reid_model(model, cfg, out_dir)
        atomic_write_json(Path(out_dir) / "history.json", history)
    return TrainResult(model=model, history=history, label_pids=model.label_pids)


def endless(loader: DataLoader, sampler: PKSampler):
    """Batches forever, re-seeding the sampler at every pass."""
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def train_stage(cfg: ReIDTrainConfig, out_dir: str | Path, data: str | Path, baseline: bool = False,
                progress: bool = True) -> dict[str, dict[str, float]]:
    """The `train` stage: train on ``data``'s train split, evaluate on its query/gallery (and, with ``baseline``,
    the untrained model too); writes OUT/metrics.json and returns the metrics per model."""
    from diffreid.data import load_dataset

    dataset = load_dataset("market_layout", data)
    print(dataset.summary())
    rows = {}
    if baseline:
        num_ids = len({r.pid for r in dataset.train})
        untrained = build_reid_model(cfg.model, num_ids, (cfg.height, cfg.width))
        rows["before training"] = evaluate_reid(untrained, dataset, cfg)
    t0 = time.time()
    result = train_reid(cfg, dataset.train, out_dir=out_dir, progress=progress)
    train_seconds = time.time() - t0
    rows[f"trained ({cfg.model.backbone}, {cfg.epochs} epochs)"] = evaluate_reid(result.model, dataset, cfg)
    atomic_write_json(Path(out_dir) / "metrics.json", {"dataset": str(data), "train_seconds": train_seconds,
                                                       "results": rows})
    return rows


def ensure_reid_model(train_cfg: ReIDTrainConfig, train_records, folder: Path, progress: bool) -> Path:
    """A Re-ID model in ``folder``: the one already there (``reid_model.json`` is written last), else trained
    with the project's BoT trainer (the filter's model; the fidelity reader)."""
    if (Path(folder) / "reid_model.json").is_file():
        return Path(folder)
    train_reid(train_cfg, train_records, out_dir=folder, progress=progress)
    return Path(folder)
