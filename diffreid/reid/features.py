"""Feature extraction and Market-protocol evaluation of a Re-ID model."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffreid.data.types import DatasetError, ImageRecord, ReIDDataset
from diffreid.reid.transforms import eval_transform

ImageLike = Union[Image.Image, str, Path, ImageRecord]


def load_rgb(item: ImageLike) -> Image.Image:
    """A PIL RGB image from a PIL image, a file path or an ImageRecord (IR images become 3 equal channels)."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    path = item.path if isinstance(item, ImageRecord) else item
    if not isinstance(path, (str, Path)):
        raise TypeError(f"expected a PIL image, a path or an ImageRecord, got {type(item).__name__}")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"image {path} does not exist") from None
    except OSError as err:
        raise DatasetError(f"image {path} cannot be read as an image ({err})") from None


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: Iterable[ImageLike], *, batch_size: int = 64,
                     device: str | torch.device | None = None, height: int | None = None,
                     width: int | None = None, flip: bool = False,
                     dtype: torch.dtype | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised eval-mode features.

    ``height``/``width`` default to the size the model was trained at (``model.input_size``). ``flip``
    averages each image's feature with its mirror's. ``dtype`` fp16/bf16 autocasts on CUDA only.
    """
    if height is None or width is None:
        if getattr(model, "input_size", None) is None:
            raise ValueError("extract_features: pass height and width (the model records no input size)")
        height, width = model.input_size
    images = list(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    mean = getattr(model, "pixel_mean", (0.485, 0.456, 0.406))
    std = getattr(model, "pixel_std", (0.229, 0.224, 0.225))
    transform = eval_transform(height, width, mean, std)
    autocast = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)

    was_training = model.training
    model.to(device).eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            batch = torch.stack([transform(load_rgb(x)) for x in images[start:start + batch_size]])
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=autocast):
                feats = model(batch).float()
                if flip:
                    feats = feats + model(batch.flip(-1)).float()
            out.append(F.normalize(feats, dim=1).cpu())
    finally:
        model.train(was_training)
    if not out:
        dim = getattr(model, "feat_dim", 0)
        return np.zeros((0, dim), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def evaluate_reid(model: torch.nn.Module, dataset: ReIDDataset, cfg) -> dict[str, float]:
    """Market-protocol metrics of ``model`` on ``dataset.query`` vs ``dataset.gallery``: a flat dict
    (``Rank-1``, ``Rank-5``, ``Rank-10``, ``mAP``, ``mINP``). ``cfg`` is a ReIDTrainConfig (size, device, batch)."""
    from diffreid.reid.metrics import compute_distmat, evaluate_rank

    if not dataset.query or not dataset.gallery:
        raise DatasetError(f"{dataset.root}: evaluation needs non-empty query and gallery splits "
                           f"(got {len(dataset.query)} query, {len(dataset.gallery)} gallery images)")
    kwargs = dict(batch_size=cfg.eval_batch_size, device=cfg.runtime.torch_device(), height=cfg.height,
                  width=cfg.width, flip=cfg.eval_flip, dtype=cfg.runtime.torch_dtype())
    qf = extract_features(model, dataset.query, **kwargs)
    gf = extract_features(model, dataset.gallery, **kwargs)
    distmat = compute_distmat(qf, gf, metric="cosine")
    pids = lambda recs: np.array([r.pid for r in recs])
    cams = lambda recs: np.array([r.camid for r in recs])
    result = evaluate_rank(distmat, pids(dataset.query), pids(dataset.gallery),
                           cams(dataset.query), cams(dataset.gallery))
    return {k: float(v) for k, v in result.as_dict().items()}
