"""Ray Train glue for pre-training: DDP workers run `diffreid.reid.pretrain.run_pretraining` unchanged.

Data feeding: a sharded torch DataLoader (`ray.train.torch.prepare_data_loader` adds a DistributedSampler).
Why not Ray Data: the inputs are small image files every worker can read from shared storage, and the
augmentations (RandAugment, Random Erasing, Mixup/CutMix) are timm's torch transforms; a sharded loader
keeps one code path for in-process and distributed runs and adds no object-store copies.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import astuple
from functools import partial
from pathlib import Path
from typing import Sequence

from diffreid.data.types import ImageRecord
from diffreid.reid.pretrain import PretrainConfig, export_backbone, run_pretraining


def _train_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    cfg = PretrainConfig.model_validate(config["cfg"])
    records = [ImageRecord(*r) for r in config["records"]]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()

    def report(metrics: dict, ckpt_dir: Path | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir and rank == 0 else None
        ray.train.report(metrics, checkpoint=checkpoint)

    # With CUDA, Ray Train moves the model and batches to the device it assigned this worker. A node that declares a
    # GPU without CUDA (the fake test cluster) would get "cuda:0" from Ray: keep everything where runtime put it.
    on_cuda = torch.cuda.is_available()
    checkpoint = ray.train.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else nullcontext(None)) as resume_dir:
        run_pretraining(cfg, records, prepare_model=partial(ray.train.torch.prepare_model, move_to_device=on_cuda),
                        prepare_loader=partial(ray.train.torch.prepare_data_loader, move_to_device=on_cuda),
                        world_size=ctx.get_world_size(),
                        resume_dir=resume_dir, save_checkpoint=report, progress=rank == 0)


def distributed_backend(cfg: PretrainConfig) -> str:
    if cfg.ray.backend != "auto":
        return cfg.ray.backend
    return "nccl" if cfg.ray.use_gpu else "gloo"


def pretrain_with_ray(cfg: PretrainConfig, records: Sequence[ImageRecord], out_dir: str | Path,
                      run_name: str = "pretrain"):
    """Run pre-training as a Ray Train job; export the last checkpoint's backbone to OUT. Returns the Result."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = Path(out_dir).resolve()
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker=_train_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "records": [astuple(r) for r in records]},
        torch_config=TorchConfig(backend=distributed_backend(cfg)),
        scaling_config=ScalingConfig(num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name, storage_path=cfg.ray.storage_path or str(out / "ray"),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.ray.checkpoints_to_keep)),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as ckpt:
        export_backbone(cfg, Path(ckpt) / "state.pt", out)
    return result


def pretrain_stage_ray(cfg: PretrainConfig, out_dir: str | Path, data: str | Path) -> Path:
    """The `pretrain` stage on Ray Train: pre-train on the train split of the Market-layout folder ``data``."""
    from diffreid.data import load_dataset

    pretrain_with_ray(cfg, load_dataset("market_layout", data, splits=("train",)).train, out_dir)
    return Path(out_dir) / "backbone.safetensors"
