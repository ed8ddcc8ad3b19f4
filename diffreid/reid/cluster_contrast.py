"""Cluster-contrast learning on unlabelled images: Cluster-Contrast (Dai et al., 2021, "Cluster Contrast for
Unsupervised Person Re-Identification"), the unsupervised and domain-adaptation stage of ``finetune-eval``.

Every epoch: eval-mode features of all training images -> k-reciprocal Jaccard distance (the project's
re-ranking code: :func:`diffreid.reid.metrics.jaccard_distance`, or above ``dense_jaccard_max`` images the sparse
FAISS k-NN :func:`~diffreid.reid.metrics.jaccard_distance_knn`) -> scikit-learn DBSCAN pseudo-labels (outliers,
label -1, are left out of that epoch) -> a cluster memory initialised with the L2-normalised cluster centroids.
Then PK batches over the pseudo-labels train the encoder with the InfoNCE loss of each image's BN-neck feature
against every cluster in the memory (temperature ``tau``), and each image's feature updates its own cluster's
entry with momentum (``c <- m c + (1 - m) f``, renormalised), as Cluster-Contrast's default (non-hard) memory does.
The labels in the records are never read.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader

from diffreid.data.types import DatasetError, ImageRecord

log = logging.getLogger(__name__)


class ClusterContrastConfig(BaseModel):
    """The cluster-contrast stage; model, input size, augmentation and runtime come from the trainer config."""

    model_config = ConfigDict(extra="forbid")

    eps: float = Field(0.6, gt=0, lt=1, description="Cluster-Contrast's DBSCAN radius on the Jaccard distance "
                       "(Market-1501); larger merges more images into fewer clusters")
    min_samples: int = Field(4, ge=2, description="Cluster-Contrast's DBSCAN min_samples: a core image needs 4 "
                             "neighbours within eps, so a pseudo-identity has several images for PK batches")
    k1: int = Field(30, ge=1, description="Cluster-Contrast's k-reciprocal neighbourhood (k1=30); must be below "
                    "the number of training images, so lower it (e.g. 10) for toy worlds of ~100 images")
    k2: int = Field(6, ge=1, description="Cluster-Contrast's local query expansion (k2=6)")
    dense_jaccard_max: int = Field(4000, ge=0, description="up to this many images the dense O(N^2) Jaccard "
                                   "distance is used; above it the sparse FAISS k-NN one, since N^2 floats several "
                                   "times over do not fit for Market-1501 (12,936) or MSMT17 (32,621)")
    momentum: float = Field(0.1, ge=0, lt=1, description="Cluster-Contrast's memory momentum: c <- 0.1 c + 0.9 f, "
                            "so centroids follow the encoder within an epoch")
    temperature: float = Field(0.05, gt=0, description="Cluster-Contrast's InfoNCE temperature")
    epochs: int = Field(50, ge=1, description="Cluster-Contrast trains 50 epochs, re-clustering at each")
    iters_per_epoch: int | None = Field(200, ge=1, description="Cluster-Contrast's Market-1501 run: 200 "
                                        "iterations per epoch; None = one pass over the clustered images")
    P: int = Field(16, ge=1, description="Cluster-Contrast: batch 256 = 16 pseudo-identities x 16 images")
    K: int = Field(16, ge=1, description="Cluster-Contrast: 16 instances per pseudo-identity")
    lr: float = Field(3.5e-4, gt=0, description="Cluster-Contrast's Adam learning rate")
    weight_decay: float = Field(5e-4, ge=0, description="Cluster-Contrast's weight decay")
    step_size: int = Field(20, ge=1, description="Cluster-Contrast: LR x 0.1 every 20 epochs")


@dataclass
class ClusterContrastResult:
    model: torch.nn.Module
    history: list[dict] = field(default_factory=list)  # per epoch: clusters, outliers, loss, seconds


def pseudo_labels(features: np.ndarray, cfg: ClusterContrastConfig) -> np.ndarray:
    """DBSCAN labels (0..C-1, -1 = outlier) of L2-normalised features over their k-reciprocal Jaccard distance:
    the dense one up to ``cfg.dense_jaccard_max`` images, else the sparse k-NN one (pairs with no overlapping
    neighbour weights are left out, i.e. at distance 1 > eps; DBSCAN reads the stored entries as the graph)."""
    from sklearn.cluster import DBSCAN

    from diffreid.reid.metrics import compute_distmat, jaccard_distance, jaccard_distance_knn

    if len(features) <= cfg.k1:
        raise DatasetError(f"cluster.k1={cfg.k1} needs more than {cfg.k1} training images, got {len(features)}: "
                           "lower cluster.k1")
    if len(features) <= cfg.dense_jaccard_max:
        jaccard = jaccard_distance(compute_distmat(features, features, metric="cosine"), cfg.k1, cfg.k2)
    else:
        jaccard = jaccard_distance_knn(features, cfg.k1, cfg.k2, max_distance=cfg.eps)
    return DBSCAN(eps=cfg.eps, min_samples=cfg.min_samples, metric="precomputed").fit_predict(jaccard)


def cluster_contrast(model, records: Sequence[ImageRecord], cfg: ClusterContrastConfig, train_cfg,
                     progress: bool = False) -> ClusterContrastResult:
    """Train ``model`` (a ReIDModel, from any init) on ``records`` without their labels; returns it in eval mode.
    ``train_cfg`` (a ReIDTrainConfig) gives the input size, augmentation, device and seed."""
    from diffreid.reid.features import extract_features
    from diffreid.reid.sampler import PKSampler
    from diffreid.reid.train import RecordDataset, endless, seed_everything
    from diffreid.reid.transforms import train_transform

    # 1. check inputs
    records = list(records)
    if not records:
        raise DatasetError("cluster_contrast: the training split is empty")
    device = train_cfg.runtime.torch_device()
    seed_everything(train_cfg.runtime.seed)
    model.to(device)
    transform = train_transform(train_cfg.height, train_cfg.width, model.pixel_mean, model.pixel_std,
                                flip_prob=train_cfg.flip_prob, pad=train_cfg.pad, erasing_prob=train_cfg.erasing_prob)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                 weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=0.1)

    history = []
    for epoch in range(cfg.epochs):
        t0 = time.time()
        # 2. pseudo-labels of all images from the current encoder
        feats = extract_features(model, records, batch_size=train_cfg.eval_batch_size, device=device,
                                 height=train_cfg.height, width=train_cfg.width)
        labels = pseudo_labels(feats, cfg)
        clusters = int(labels.max()) + 1
        if clusters < 2:
            raise DatasetError(f"cluster_contrast epoch {epoch + 1}: DBSCAN found {clusters} cluster(s) among "
                               f"{len(records)} images (eps={cfg.eps}, min_samples={cfg.min_samples}); a contrast "
                               "needs 2: change cluster.eps or cluster.min_samples")
        kept = np.flatnonzero(labels >= 0)

        # 3. cluster memory: normalised centroids
        centroids = np.stack([feats[labels == c].mean(0) for c in range(clusters)])
        memory = F.normalize(torch.from_numpy(centroids), dim=1).to(device)

        # 4. PK batches over the pseudo-labels (P lowered to the cluster count when there are fewer clusters)
        pseudo = [replace(records[i], pid=int(labels[i])) for i in kept]
        p = min(cfg.P, clusters)
        if p < cfg.P:
            log.info("cluster_contrast epoch %d: %d clusters < P=%d, batches hold %d", epoch + 1, clusters, cfg.P, p)
        sampler = PKSampler([r.pid for r in pseudo], p, cfg.K, seed=train_cfg.runtime.seed + 1000 * epoch)
        loader = DataLoader(RecordDataset(pseudo, transform), batch_sampler=sampler,
                            num_workers=train_cfg.num_workers)
        batches = endless(loader, sampler)
        iters = cfg.iters_per_epoch or len(sampler)

        # 5. InfoNCE against the memory, momentum update of each image's own cluster
        model.train()
        loss_sum = 0.0
        for _ in range(iters):
            images, targets, _ = next(batches)
            images, targets = images.to(device), targets.to(device)
            out = F.normalize(model.bnneck(model.global_feature(images)), dim=1)
            loss = F.cross_entropy(out @ memory.t() / cfg.temperature, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"cluster_contrast: loss became {loss.item()} at epoch {epoch + 1}; "
                                         "lower cluster.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for x, y in zip(out.detach(), targets.tolist()):
                    memory[y] = F.normalize(cfg.momentum * memory[y] + (1 - cfg.momentum) * x, dim=0)
            loss_sum += loss.item()
        scheduler.step()
        row = {"epoch": epoch + 1, "clusters": clusters, "outliers": int(len(records) - len(kept)),
               "loss": loss_sum / iters, "seconds": time.time() - t0}
        history.append(row)
        log.info("cluster-contrast epoch %d/%d: %d clusters, %d outliers, loss %.4f", epoch + 1, cfg.epochs,
                 clusters, row["outliers"], row["loss"])
        if progress:
            print(f"cluster-contrast epoch {epoch + 1}/{cfg.epochs}: {clusters} clusters, {row['outliers']} "
                  f"outliers, loss {row['loss']:.4f}")
    model.eval()
    return ClusterContrastResult(model=model, history=history)
