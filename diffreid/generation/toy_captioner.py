"""The toy world's captioner: a small CNN that predicts a person's attributes from pixels, written as text.

The analogue of BLIP-2 for LPE: trained on the toy base model's identity pool (disjoint from every
evaluation identity), it reads clothing colours and types, bag, hair and view from an image and writes the
caption ``describe()`` would write for those attributes. Weights: ``model.safetensors`` + ``config.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from diffreid.config import RuntimeConfig, StageConfig
from diffreid.data.toyworld import ATTRIBUTE_VOCAB, VIEWS, Identity, describe
from diffreid.io import atomic_dir, atomic_write_json

HEADS = {name: ATTRIBUTE_VOCAB[name] for name in (
    "upper_colour", "upper_pattern", "sleeve", "lower_colour", "lower_type", "shoes_colour", "bag_type",
    "bag_colour", "hair_colour", "hair_length")}
HEADS["view"] = list(VIEWS)
INPUT_SIZE = (64, 32)


class ToyCaptionerTrainConfig(StageConfig):
    steps: int = Field(600, ge=1, description="~3.5 min on 2 cores; colours are learnt within a few hundred steps")
    batch: int = Field(128, ge=1, description="small images, large batches")
    lr: float = Field(2e-3, gt=0, description="AdamW with cosine decay")
    width: int = Field(32, ge=8, description="channels of the first conv stage")
    seed: int = Field(0, description="weights and batches derive from it")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="held-out pool identities for the accuracy table")


def build_net(width: int = 32):
    import torch
    from torch import nn

    def stage(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class AttributeNet(nn.Module):
        def __init__(self):
            super().__init__()
            w = width
            self.features = nn.Sequential(stage(3, w), nn.MaxPool2d(2), stage(w, 2 * w), nn.MaxPool2d(2),
                                          stage(2 * w, 4 * w), nn.MaxPool2d(2), stage(4 * w, 4 * w))
            # keep the vertical layout (head / torso / legs / feet) and pool only across the width
            self.pool = nn.AdaptiveAvgPool2d((4, 1))
            self.heads = nn.ModuleDict({k: nn.Linear(16 * w, len(v)) for k, v in HEADS.items()})

        def forward(self, x):
            f = torch.flatten(self.pool(self.features(x)), 1)
            return {k: head(f) for k, head in self.heads.items()}

    return AttributeNet()


def to_input(images, device=None):
    """PIL images or a uint8 N x H x W x 3 array -> normalised N x 3 x 64 x 32 tensor."""
    import torch
    from PIL import Image

    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack([np.asarray(im.convert("RGB").resize(INPUT_SIZE[::-1], Image.BILINEAR)) for im in images])
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-2:] != INPUT_SIZE:
        x = torch.nn.functional.interpolate(x, size=INPUT_SIZE, mode="bilinear", align_corners=False)
    return x if device is None else x.to(device)


def attribute_targets(identities: list[Identity], views: list[str]):
    import torch

    targets = {}
    for name, values in HEADS.items():
        if name == "view":
            targets[name] = torch.tensor([values.index(v) for v in views])
        else:
            # bag_colour "none" (no bag) is not a colour: ignored by the loss (-100)
            targets[name] = torch.tensor([values.index(getattr(i, name)) if getattr(i, name) in values else -100
                                          for i in identities])
    return targets


def train_toy_captioner(cfg: ToyCaptionerTrainConfig, images: np.ndarray, identities: list[Identity],
                        views: list[str], out_dir) -> dict:
    """Train on a pool (images + their identities/views), hold out ``val_fraction`` of the identities, write
    the model folder; returns per-attribute held-out accuracy and timings."""
    import torch
    from safetensors.torch import save_file
    from tqdm import tqdm

    pids = sorted({i.pid for i in identities})
    rng = np.random.default_rng(cfg.seed)
    val_pids = set(rng.choice(pids, size=max(1, int(len(pids) * cfg.val_fraction)), replace=False).tolist())
    is_val = np.array([i.pid in val_pids for i in identities])
    targets = attribute_targets(identities, views)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    torch.manual_seed(cfg.seed)
    net = build_net(cfg.width)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    t0 = time.time()
    net.train()
    losses = []
    for step in (bar := tqdm(range(cfg.steps), desc="toy captioner", unit="step")):
        pick = train_idx[rng.integers(len(train_idx), size=cfg.batch)]
        x = to_input(images[pick])
        if rng.random() < 0.5:  # people face both ways
            x = x.flip(-1)
        out = net(x)
        loss = sum(torch.nn.functional.cross_entropy(out[k], targets[k][pick], ignore_index=-100) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0
    net.eval()
    accuracy = {}
    with torch.no_grad():
        preds = {k: [] for k in HEADS}
        for i in range(0, len(val_idx), 512):
            out = net(to_input(images[val_idx[i:i + 512]]))
            for k in HEADS:
                preds[k].append(out[k].argmax(1))
        for k in HEADS:
            p, t = torch.cat(preds[k]), targets[k][val_idx]
            keep = t != -100
            accuracy[k] = float((p[keep] == t[keep]).float().mean())
    out = Path(out_dir)
    with atomic_dir(out, replace=True) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp / "model.safetensors"))
        atomic_write_json(tmp / "config.json", {
            "architecture": "diffreid-toy-attribute-cnn", "width": cfg.width, "input_size": list(INPUT_SIZE),
            "heads": HEADS, "train": cfg.model_dump(mode="json"), "val_accuracy": accuracy,
            "train_seconds": round(train_s, 1)})
        atomic_write_json(tmp / "train_log.json", {"loss": losses[::10]})
    return {"accuracy": accuracy, "train_seconds": train_s, "out": str(out)}


class ToyCaptioner:
    """Captions images with the trained toy attribute predictor (``caption``), or returns the attributes
    themselves (``predict``)."""

    def __init__(self, model_path, runtime: RuntimeConfig | None = None, batch_size: int = 256):
        import torch
        from safetensors.torch import load_file

        from diffreid.generation.captioners import CaptionerError

        folder = Path(model_path).expanduser()
        config_path, weights = folder / "config.json", folder / "model.safetensors"
        if not config_path.is_file() or not weights.is_file():
            raise CaptionerError(f"toy captioner folder {folder} must hold config.json and model.safetensors "
                                 "(written by `python -m ray_jobs.train_toy_base --part captioner`)")
        config = json.loads(config_path.read_text())
        if config.get("architecture") != "diffreid-toy-attribute-cnn" or config.get("heads") != HEADS:
            raise CaptionerError(f"{config_path} is not a toy attribute captioner of this diffreid version "
                                 "(architecture or attribute heads differ)")
        self.runtime = runtime or RuntimeConfig()
        self.device = self.runtime.torch_device()
        self.net = build_net(int(config["width"]))
        self.net.load_state_dict(load_file(str(weights)))
        self.net.to(self.device).eval()
        self.batch_size = batch_size
        self.cache_key = f"toy:{folder.resolve()}"
        self.torch = torch

    def predict(self, images: list) -> list[dict[str, str]]:
        rows = []
        with self.torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                out = self.net(to_input(images[i:i + self.batch_size], self.device))
                idx = {k: v.argmax(1).tolist() for k, v in out.items()}
                for j in range(len(idx["view"])):
                    rows.append({k: HEADS[k][idx[k][j]] for k in HEADS})
        return rows

    def caption(self, images: list) -> list[str]:
        """Captions name the person only: the view changes within a sequence and is not part of the identity."""
        return [caption_from_attributes({**a, "view": None}) for a in self.predict(images)]


def caption_from_attributes(attrs: dict[str, str]) -> str:
    fields = {name: attrs.get(name, "none") for name in HEADS if name != "view"}
    if fields["bag_type"] == "none":
        fields["bag_colour"] = "none"
    ident = Identity(pid=0, pattern_colour="black", skin_tone="medium", body_height=1.0, body_width=1.0, bag_side=1,
                     **fields)
    return describe(ident, attrs.get("view"))
