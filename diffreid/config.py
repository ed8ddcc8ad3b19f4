"""Typed, YAML-loadable stage configs.

Every stage has one pydantic model derived from :class:`StageConfig`. Unknown keys are errors (a typo in a
YAML file must not be silently ignored), and ``load`` accepts ``key.sub=value`` overrides like the CLI.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from diffreid.errors import DiffreidError

T = TypeVar("T", bound="StageConfig")

DeviceName = Literal["cpu", "cuda", "auto"]
DTypeName = Literal["fp32", "fp16", "bf16"]


class ConfigError(DiffreidError, ValueError):
    """A config file or override is invalid; the message names the file and field."""


RESOLVED_CONFIG = "config.yaml"  # every stage writes its resolved config as OUT/config.yaml before any work


def resolved_config(out: str | Path) -> Path | None:
    """A stage output's resolved config (``build_config.yaml``: builds made before the name was one)."""
    for name in (RESOLVED_CONFIG, "build_config.yaml"):
        if (Path(out) / name).is_file():
            return Path(out) / name
    return None


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @classmethod
    def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
             **fields: Any) -> T:
        """Build from a YAML file (optional) + ``a.b=value`` overrides + keyword fields."""
        data: dict[str, Any] = {}
        source = "<defaults>"
        if path is not None:
            data = resolve_includes(cls, read_yaml(path), Path(path).parent)
            source = str(path)
        apply_overrides(data, overrides or [])
        data.update(fields)
        return cls.validated(data, source)

    @classmethod
    def validated(cls: type[T], data: dict[str, Any], source: str) -> T:
        """``model_validate`` whose errors are one ConfigError listing every field, dotted, with ``source``."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(format_validation_error(err, source, cls.__name__)) from None

    def to_yaml(self, path: str | Path) -> None:
        from diffreid.io import atomic_write_text

        atomic_write_text(path, yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {p} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level, got {type(data).__name__}")
    return merge_base(data, p.parent)


def merge_base(data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """The one `_BASE_` rule: `_BASE_: FILE` (relative to ``base_dir``) gives the fields ``data`` overrides."""
    base = data.pop("_BASE_", None)
    if not base:
        return data
    merged = read_yaml(Path(base_dir) / base)
    deep_update(merged, data)
    return merged


def resolve_includes(model: type[BaseModel], data: dict[str, Any], base_dir: Path) -> dict[str, Any]:
    """A sub-config given as a YAML path (``pretrain: toy-pretrain.yaml``, relative to ``base_dir``) or as a
    mapping with `_BASE_` becomes plain fields, so overrides and validation see one nested mapping."""
    for name, info in model.model_fields.items():
        sub = _stage_model(info.annotation)
        value = data.get(name)
        if sub is None:
            continue
        if isinstance(value, str) and value.endswith((".yaml", ".yml")):
            path = Path(base_dir) / value
            data[name] = resolve_includes(sub, read_yaml(path), path.parent)
        elif isinstance(value, dict):
            data[name] = resolve_includes(sub, merge_base(dict(value), base_dir), base_dir)
    return data


def _stage_model(annotation) -> type[BaseModel] | None:
    """The config model a field holds (``X`` or ``X | None``), else None."""
    import typing

    candidates = typing.get_args(annotation) or (annotation,)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str = "override") -> dict[str, Any]:
    """The one ``a.b=value`` parser (values are YAML: ``3``, ``true``, ``[1, 2]``, ``null``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{where} {item!r}: expected the form key.sub=value")
        set_dotted(data, key, yaml.safe_load(raw))
    return data


def deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            deep_update(dst[key], value)
        else:
            dst[key] = value


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part!r} is not a section")
    node[leaf] = value


def format_validation_error(err: ValidationError, source: str, model: str) -> str:
    lines = [f"invalid {model} config ({source}):"]
    for e in err.errors():
        field = ".".join(str(x) for x in e["loc"]) or "<root>"
        got = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
        lines.append(f"  - {field}: {e['msg']}{got}"[:300])
    return "\n".join(lines)


def fill_runtime(runtime: "RuntimeConfig", parts) -> None:
    """The one runtime policy of a composed config: a part that does not set its own runtime gets the parent's."""
    for part in parts:
        if "runtime" not in part.model_fields_set:
            object.__setattr__(part, "runtime", runtime.model_copy())


class RuntimeConfig(StageConfig):
    """Where a stage runs. Shared by every stage that touches a model."""

    device: DeviceName = Field("auto", description="auto = cuda when available, else cpu")
    dtype: DTypeName = Field("fp32", description="fp32 is the safe default; fp16/bf16 halve GPU memory")
    seed: int = Field(0, description="one seed per run makes every stage reproducible")
    gpu_memory_gb: float | None = Field(None, gt=0, description="GPU to plan the build's memory against before work "
                                        "starts; None = the card's own on CUDA, no check elsewhere")

    def torch_device(self):
        """``cuda`` means the current CUDA device, never a fixed index. In a Ray task or actor with
        ``num_gpus=1`` Ray sets CUDA_VISIBLE_DEVICES to the one GPU it assigned and CUDA numbers the visible
        devices from 0, so this is that GPU (tests/test_autoscaling.py checks Ray's assignment on a fake
        multi-node cluster); ``auto`` falls back to the CPU where torch sees no CUDA."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("runtime.device is 'cuda' but torch sees no CUDA device")
        return torch.device(self.device)

    def torch_dtype(self):
        import torch

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.dtype]
        if dtype is torch.float16 and self.torch_device().type == "cpu":
            raise ConfigError("runtime.dtype fp16 needs a GPU: use fp32 or bf16 on cpu")
        return dtype
