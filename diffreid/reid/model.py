"""The BoT-style Re-ID model: timm backbone (last stride 1) -> avg/GeM pool -> BNNeck -> bias-free classifier.

Training forward returns ``(logits, global_feat)`` (ID loss on the logits, triplet loss on the pooled
feature); eval forward returns the BN-neck feature, the one used for retrieval.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from diffreid.config import ConfigError, StageConfig
from diffreid.io import atomic_path, atomic_write_json

WEIGHTS_NAME = "model.safetensors"
META_NAME = "reid_model.json"
# set by the factory from the input size, the class count and the weight file: never through backbone_kwargs
RESERVED_BACKBONE_KWARGS = frozenset({"img_size", "num_classes", "pretrained", "pretrained_cfg_overlay"})


def check_backbone_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    reserved = sorted(RESERVED_BACKBONE_KWARGS & set(kwargs))
    if reserved:
        raise ValueError(f"{', '.join(reserved)} cannot be set in backbone_kwargs: the input size comes from "
                         "height/width, the class count from the data and the weights from pretrained_file")
    return kwargs


def create_backbone(name: str, *, num_classes: int = 0, img_size: tuple[int, int] | None = None,
                    pretrained_file: str | None = None, field: str = "backbone", **kwargs: Any) -> nn.Module:
    """The one backbone factory: ``timm.create_model`` with local weights only.

    Models whose timm config declares a fixed input size (Swin, ViT, ...) are built for ``img_size`` (height,
    width), e.g. the 2:1 Re-ID input 256x128, through timm's own ``img_size`` argument (timm adapts
    position embeddings / relative-position tables of a weight file to it); size-agnostic CNNs ignore it.
    ``pretrained_file`` is a local timm checkpoint or .safetensors (nothing is ever downloaded); ``kwargs``
    are further model arguments (e.g. ``embed_dim``, ``depths``, ``num_heads``, ``window_size`` for a small
    Swin). ``field`` names the config field in errors.
    """
    import timm
    from timm.models import get_pretrained_cfg

    if pretrained_file:
        path = Path(pretrained_file)
        if not path.is_file():
            section = field.rpartition(".")[0]
            raise ConfigError(f"{section + '.' if section else ''}pretrained_file: {path} does not exist "
                              "(a timm checkpoint or .safetensors file was expected)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    else:
        kwargs["pretrained"] = False
    pretrained_cfg = get_pretrained_cfg(name)
    if img_size is not None and pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        kwargs["img_size"] = tuple(img_size)
    try:
        return timm.create_model(name, num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ConfigError(f"{field}: {name!r} is not a timm model name") from None
        raise


class ReIDModelConfig(StageConfig):
    backbone: str = Field("resnet50", description="BoT's backbone; any timm model name works (Swin/ViT are built "
                          "for the trainer's height x width through timm's img_size)")
    backbone_kwargs: dict[str, Any] = Field(
        {}, description="extra timm.create_model arguments, e.g. a small Swin: {embed_dim: 48, depths: [2, 2], "
        "num_heads: [2, 4], window_size: 4}; empty = the named model as timm defines it")
    pretrained_file: str | None = Field(
        None, description="local timm checkpoint/safetensors (e.g. ImageNet or our pre-trained backbone); "
        "None = random init, nothing is ever downloaded")
    last_stride_1: bool = Field(True, description="BoT: stride 1 in the last stage doubles the feature map "
                                "for finer detail at little cost (timm ResNets only)")
    pool: Literal["avg", "gem"] = Field("avg", description="BoT uses average pooling; GeM (p=3, learned) "
                                        "often helps a little")
    gem_p: float = Field(3.0, gt=0, description="GeM's usual starting exponent")

    @field_validator("backbone_kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_backbone_kwargs(value)


class GeM(nn.Module):
    """Generalised-mean pooling with a learned exponent."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class AvgPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def set_last_stride_1(backbone: nn.Module, name: str) -> bool:
    """Make the last stage of a timm ResNet keep its input resolution. Returns False for other backbones."""
    from timm.models.resnet import ResNet

    if not isinstance(backbone, ResNet):
        return False
    last_stage = getattr(backbone, backbone.feature_info[-1]["module"])
    changed = False
    for parent in last_stage.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.stride != (1, 1):
                child.stride = (1, 1)
                changed = True
            elif isinstance(child, nn.AvgPool2d) and child.stride not in (1, (1, 1)):
                setattr(parent, child_name, nn.Identity())  # resnet-d style "avg_down" shortcut
                changed = True
    if not changed:
        raise ConfigError(f"model.last_stride_1: found no stride-2 layer in the last stage of {name!r}")
    return True


class ReIDModel(nn.Module):
    """``input_size`` (height, width) is the size the model is trained and used at; fixed-size backbones
    (Swin, ViT) are built for it, so it must be given for them unless their timm default size is wanted."""

    def __init__(self, cfg: ReIDModelConfig, num_classes: int, input_size: tuple[int, int] | None = None):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.backbone = create_backbone(cfg.backbone, num_classes=0, img_size=input_size,
                                        pretrained_file=cfg.pretrained_file, field="model.backbone",
                                        **cfg.backbone_kwargs)
        if cfg.last_stride_1 and not set_last_stride_1(self.backbone, cfg.backbone):
            warnings.warn(f"model.last_stride_1 is only implemented for timm ResNets; "
                          f"{cfg.backbone!r} keeps its strides", stacklevel=2)
        self.cfg = cfg
        self.num_classes = num_classes
        self.feat_dim = self.backbone.num_features
        self.pool = GeM(cfg.gem_p) if cfg.pool == "gem" else AvgPool()
        self.bnneck = nn.BatchNorm1d(self.feat_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: BN without a learned shift before the classifier
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        data_cfg = self.backbone.pretrained_cfg
        self.pixel_mean = tuple(data_cfg.get("mean", (0.485, 0.456, 0.406)))
        self.pixel_std = tuple(data_cfg.get("std", (0.229, 0.224, 0.225)))
        self.input_size: tuple[int, int] | None = tuple(input_size) if input_size else None  # (height, width)
        self.label_pids: list[int] | None = None  # dataset pid of each classifier label

    def global_feature(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)
        if feats.ndim == 4:
            if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
                feats = feats.permute(0, 3, 1, 2)
            return self.pool(feats)
        return self.backbone.forward_head(feats, pre_logits=True)  # token models pool their own way

    def forward(self, x: torch.Tensor):
        global_feat = self.global_feature(x)
        bn_feat = self.bnneck(global_feat)
        if not self.training:
            return bn_feat
        return self.classifier(bn_feat), global_feat

    def load_backbone_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from a backbone state dict (timm key names, or ``backbone.``-prefixed); classifier keys are ignored."""
        prefix = "backbone."
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        head = {"fc.weight", "fc.bias", "head.weight", "head.bias", "head.fc.weight", "head.fc.bias",
                "classifier.weight", "classifier.bias"}
        state = {k: v for k, v in state.items() if k not in head}
        try:
            missing, unexpected = self.backbone.load_state_dict(state, strict=False)
        except RuntimeError as err:  # shape mismatches
            raise ValueError(f"backbone state does not fit {self.cfg.backbone!r}: {err}") from None
        if missing or unexpected:
            raise ValueError(f"backbone state does not fit {self.cfg.backbone!r}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def build_reid_model(cfg: ReIDModelConfig, num_classes: int,
                     input_size: tuple[int, int] | None = None) -> ReIDModel:
    return ReIDModel(cfg, num_classes, input_size)


def save_reid_model(model: ReIDModel, cfg, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` + ``reid_model.json`` (model config, classes, input size, normalisation).

    ``cfg`` is the ReIDTrainConfig (its resolved YAML is written beside the weights) or a ReIDModelConfig.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = getattr(cfg, "model", cfg)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    size = (cfg.height, cfg.width) if hasattr(cfg, "height") else model.input_size
    meta = {"model": model_cfg.model_dump(mode="json") | {"pretrained_file": None},
            "num_classes": model.num_classes,
            "input_size": list(size) if size else None,
            "label_pids": model.label_pids,
            "pixel_mean": list(model.pixel_mean), "pixel_std": list(model.pixel_std)}
    atomic_write_json(out / META_NAME, meta)
    if hasattr(cfg, "model"):
        cfg.to_yaml(out / "train_config.yaml")
    return out


def load_reid_model(model_dir: str | Path, device: str | torch.device | None = None) -> ReIDModel:
    """Rebuild a model saved by :func:`save_reid_model` (safetensors only) in eval mode."""
    from safetensors.torch import load_file

    d = Path(model_dir)
    meta_path, weights = d / META_NAME, d / WEIGHTS_NAME
    for p in (meta_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: expected a folder written by save_reid_model "
                                    f"({META_NAME} + {WEIGHTS_NAME})")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = ReIDModelConfig.model_validate(meta["model"])
        num_classes = int(meta["num_classes"])
        input_size = tuple(meta["input_size"]) if meta.get("input_size") else None
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{meta_path}: not a valid Re-ID model description ({err})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ReIDModel(cfg, num_classes, input_size)
    model.load_state_dict(load_file(str(weights)), strict=True)
    model.pixel_mean = tuple(meta["pixel_mean"])
    model.pixel_std = tuple(meta["pixel_std"])
    model.label_pids = meta.get("label_pids")
    return model.to(device or "cpu").eval()
