"""Supervised ID-classification pre-training of a timm backbone on a Diff-Person (or any Market-layout) dataset.

The paper's recipe is the default: AdamW lr 4e-3, wd 0.05, 20-epoch linear warm-up then cosine, global
batch 512, Mixup + CutMix + RandAugment + Random Erasing, 300 epochs. All augmentation, mixing, losses,
optimiser and schedule come from timm. One epoch loop (`run_pretraining`) serves both the in-process call
and the Ray Train worker (`diffreid.distributed.train`), which only swaps in DDP, a sharded loader and
`ray.train.report` as the checkpoint sink.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from diffreid.config import ConfigError, RuntimeConfig, StageConfig
from diffreid.data.types import ImageRecord, relabel
from diffreid.io import atomic_path, atomic_write_json


class RayTrainConfig(StageConfig):
    num_workers: int = Field(1, ge=1, description="DDP workers; one per GPU on a cluster")
    use_gpu: bool = Field(False, description="True on GPU clusters: one GPU per worker, nccl backend")
    backend: Literal["auto", "nccl", "gloo"] = Field("auto", description="torch.distributed backend; auto: nccl "
                                                     "with use_gpu, else gloo. gloo also where GPUs are declared "
                                                     "without CUDA (the fake multi-node test cluster)")
    cpus_per_worker: float = Field(1, gt=0, description="data loading runs in the worker process")
    gpus_per_worker: float = Field(1, ge=0, description="only used when use_gpu is true")
    max_failures: int = Field(3, ge=0, description="worker deaths survived by resuming from the last checkpoint")
    storage_path: str | None = Field(None, description="run storage (local dir or s3://, gs://); default OUT/ray")
    checkpoints_to_keep: int = Field(2, ge=1, description="the newest two bound disk use and survive a torn write")


class PretrainConfig(StageConfig):
    backbone: str = Field("resnet50", description="the paper's backbone; Swin (Table 9: swin_tiny/small/"
                          "base_patch4_window7_224) is built for height x width through timm's img_size")
    backbone_kwargs: dict[str, Any] = Field({}, description="extra timm.create_model arguments (e.g. a small Swin's "
                                            "embed_dim/depths/num_heads/window_size); fine-tuning needs the same ones")
    height: int = Field(256, gt=0, description="Re-ID input size 256x128 as in BoT/fast-reid")
    width: int = Field(128, gt=0, description="2:1 person aspect")
    epochs: int = Field(300, ge=1, description="paper §4.1")
    warmup_epochs: int = Field(20, ge=0, description="paper §4.1: 20-epoch linear warm-up")
    lr: float = Field(4e-3, gt=0, description="paper §4.1 (AdamW) at global batch 512")
    min_lr: float = Field(1e-6, ge=0, description="cosine floor")
    weight_decay: float = Field(0.05, ge=0, description="paper §4.1")
    batch_size: int = Field(512, ge=2, description="global batch (paper §4.1), split evenly over workers")
    mixup_alpha: float = Field(0.8, ge=0, description="DeiT-style Mixup strength (paper uses Mixup)")
    cutmix_alpha: float = Field(1.0, ge=0, description="DeiT-style CutMix strength (paper uses CutMix)")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="folded into the mixed targets")
    randaugment: str | None = Field("rand-m9-mstd0.5", description="timm RandAugment, DeiT strength (paper uses "
                                     "RandAugment); not -inc1: its posterize reaches 0 bits at magnitude 10 and crashes")
    reprob: float = Field(0.25, ge=0, le=1, description="Random Erasing probability (paper uses Random Erasing)")
    crop_scale: tuple[float, float] = Field((0.5, 1.0), description="person crops lose identity below half the box")
    loader_workers: int = Field(4, ge=0, description="DataLoader processes per training worker")
    checkpoint_every: int = Field(1, ge=1, description="epochs between checkpoints; 1 loses at most one epoch")
    runtime: RuntimeConfig = RuntimeConfig()
    ray: RayTrainConfig = RayTrainConfig()

    @field_validator("backbone_kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        from diffreid.reid.model import check_backbone_kwargs

        return check_backbone_kwargs(value)

    @model_validator(mode="after")
    def _check(self):
        if self.warmup_epochs >= self.epochs and self.epochs > 1:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        if self.batch_size % self.ray.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must divide evenly over ray.num_workers {self.ray.num_workers}")
        if (self.batch_size // self.ray.num_workers) % 2:
            raise ValueError("the per-worker batch must be even (Mixup/CutMix pair images)")
        return self


@dataclass
class PretrainState:
    """Everything a resumed run needs; saved as one checkpoint folder."""

    epoch: int  # next epoch to run
    history: list[dict]


class ImageListDataset:
    """(image, label) pairs from records; labels are the relabelled pids."""

    def __init__(self, records: Sequence[ImageRecord], transform):
        self.records = list(records)
        self.transform = transform

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        from PIL import Image

        rec = self.records[i]
        with Image.open(rec.path) as im:
            img = im.convert("RGB")
        return self.transform(img), rec.pid


def build_train_transform(cfg: PretrainConfig):
    from timm.data import create_transform

    return create_transform(
        input_size=(3, cfg.height, cfg.width), is_training=True, scale=cfg.crop_scale,
        ratio=(0.8 * cfg.width / cfg.height, 1.25 * cfg.width / cfg.height),
        auto_augment=cfg.randaugment, re_prob=cfg.reprob, re_mode="pixel", interpolation="bicubic")


def build_model(cfg: PretrainConfig, num_classes: int):
    """The backbone with a classification head, at the pre-training input size (random init)."""
    from diffreid.reid.model import create_backbone

    return create_backbone(cfg.backbone, num_classes=num_classes, img_size=(cfg.height, cfg.width),
                           **cfg.backbone_kwargs)


def run_pretraining(
    cfg: PretrainConfig,
    records: Sequence[ImageRecord],
    *,
    prepare_model: Callable = lambda m: m,
    prepare_loader: Callable = lambda loader: loader,
    world_size: int = 1,
    resume_dir: str | Path | None = None,
    save_checkpoint: Callable[[dict, Path | None], None],
    progress: bool = True,
) -> None:
    """The epoch loop. ``save_checkpoint(metrics, ckpt_dir_or_None)`` is called once per epoch on every worker."""
    import tempfile

    import torch
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from tqdm import tqdm

    # 1. data
    train_records, _ = relabel(list(records))
    num_classes = len({r.pid for r in train_records})
    if num_classes < 2:
        raise ConfigError(f"pre-training needs at least 2 identities, got {num_classes}")
    per_worker = cfg.batch_size // world_size
    if len(train_records) < per_worker * world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(train_records)} training images")
    torch.manual_seed(cfg.runtime.seed)
    loader = torch.utils.data.DataLoader(
        ImageListDataset(train_records, build_train_transform(cfg)), batch_size=per_worker, shuffle=True,
        drop_last=True, num_workers=cfg.loader_workers, persistent_workers=cfg.loader_workers > 0,
        generator=torch.Generator().manual_seed(cfg.runtime.seed))
    loader = prepare_loader(loader)

    # 2. model, optimiser, schedule, mixing
    device = cfg.runtime.torch_device()
    model = build_model(cfg, num_classes)
    optimizer = create_optimizer_v2(model, "adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=cfg.epochs, lr_min=cfg.min_lr, warmup_t=cfg.warmup_epochs,
                                  warmup_lr_init=cfg.lr / 100, t_in_epochs=True)
    state = PretrainState(epoch=0, history=[])
    if resume_dir is not None:
        ckpt = torch.load(Path(resume_dir) / "state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = PretrainState(epoch=ckpt["epoch"], history=json.loads(ckpt["history"]))
    model = prepare_model(model.to(device))
    mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, label_smoothing=cfg.label_smoothing,
                  num_classes=num_classes) if (cfg.mixup_alpha > 0 or cfg.cutmix_alpha > 0) else None
    criterion = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    use_amp = device.type == "cuda" and cfg.runtime.dtype != "fp32"

    # 3. epochs
    started_at = state.epoch
    for epoch in range(state.epoch, cfg.epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        scheduler.step(epoch)
        model.train()
        t0, seen, loss_sum = time.time(), 0, 0.0
        for images, labels in tqdm(loader, desc=f"pretrain epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                                   leave=False):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if mixup:
                images, labels = mixup(images, labels)
            with torch.autocast(device.type, dtype=cfg.runtime.torch_dtype(), enabled=use_amp):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += images.shape[0]
            loss_sum += float(loss.detach()) * images.shape[0]
        seconds = time.time() - t0
        metrics = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "lr": optimizer.param_groups[0]["lr"],
                   "images_per_s": seen * world_size / max(seconds, 1e-9), "seconds": seconds,
                   "resumed_from_epoch": started_at}
        state.history.append(metrics)
        if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
            with tempfile.TemporaryDirectory() as tmp:
                raw = model.module if hasattr(model, "module") else model
                torch.save({"model": raw.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                            "history": json.dumps(state.history), "num_classes": num_classes},
                           Path(tmp) / "state.pt")
                save_checkpoint(metrics, Path(tmp))
        else:
            save_checkpoint(metrics, None)


def export_backbone(cfg: PretrainConfig, state_path: str | Path, out_dir: str | Path) -> Path:
    """Write OUT/backbone.safetensors (no classifier; timm key names) and OUT/recipe.json."""
    import torch
    from safetensors.torch import save_file

    ckpt = torch.load(Path(state_path), map_location="cpu", weights_only=True)
    model = build_model(cfg, ckpt["num_classes"])
    model.load_state_dict(ckpt["model"])
    model.reset_classifier(0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "backbone.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"backbone": cfg.backbone, "format": "pt"})
    from timm.models import get_pretrained_cfg

    extra = "".join(f", {k}={v!r}" for k, v in cfg.backbone_kwargs.items())
    if getattr(get_pretrained_cfg(cfg.backbone), "fixed_input_size", False):
        extra += f", img_size=({cfg.height}, {cfg.width})"
    atomic_write_json(out / "recipe.json", {
        "backbone": cfg.backbone, "input_size": [3, cfg.height, cfg.width], "num_pretrain_ids": ckpt["num_classes"],
        "epochs_completed": ckpt["epoch"], "history": json.loads(ckpt["history"]),
        "config": cfg.model_dump(mode="json"),
        "load_with": f"timm.create_model('{cfg.backbone}', pretrained=True, "
                     f"pretrained_cfg_overlay=dict(file='backbone.safetensors'), num_classes=0{extra})"})
    return out / "backbone.safetensors"


def pretrain_in_process(cfg: PretrainConfig, records: Sequence[ImageRecord], out_dir: str | Path,
                        progress: bool = True) -> Path:
    """Single-process pre-training with local checkpoints in OUT/checkpoints (resumes from the newest)."""
    import shutil

    out = Path(out_dir)
    ckpt_root = out / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    done = sorted(ckpt_root.glob("epoch_*"), key=lambda p: int(p.name.split("_")[1]))

    def save(metrics: dict, ckpt: Path | None) -> None:
        print(json.dumps(metrics))
        if ckpt is not None:
            final = ckpt_root / f"epoch_{metrics['epoch']:04d}"
            tmp = ckpt_root / f".{final.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(ckpt, tmp)
            tmp.rename(final)
            for old in sorted(ckpt_root.glob("epoch_*"))[:-cfg.ray.checkpoints_to_keep]:
                shutil.rmtree(old)

    run_pretraining(cfg, records, resume_dir=done[-1] if done else None, save_checkpoint=save, progress=progress)
    latest = sorted(ckpt_root.glob("epoch_*"))[-1]
    return export_backbone(cfg, latest / "state.pt", out)


def pretrain_stage(cfg: PretrainConfig, out_dir: str | Path, data: str | Path, progress: bool = True) -> Path:
    """The `pretrain` stage: pre-train on the train split of the Market-layout folder ``data``."""
    from diffreid.data import load_dataset

    return pretrain_in_process(cfg, load_dataset("market_layout", data, splits=("train",)).train, out_dir, progress)
