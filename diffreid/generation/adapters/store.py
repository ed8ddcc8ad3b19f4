"""Identity adapters resident in one pipeline: load, activate, deactivate, delete.

One pipeline serves many identities. LoRA adapters (``lora``, ``shared_lora_ti``) live inside the base UNet
(and text encoder) under their names and are switched with ``set_adapters``; a ``dreambooth`` adapter is a
whole UNet kept beside the base one and swapped in by reference. Both switches are cheap, so a caller (the
Ray layer) can keep many adapters resident and evict with an LRU via :func:`delete_adapter`.
"""
from __future__ import annotations

import json
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from diffreid.errors import DiffreidError

ADAPTER_JSON = "adapter.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
TOKENS_FILE = "token_embeddings.safetensors"
TOKENS_JSON = "tokens.json"
UNET_DIR = "unet"


class AdapterError(DiffreidError, ValueError):
    """An adapter folder is missing/invalid, or an adapter name is unknown or clashes."""


@dataclass
class LoadedAdapter:
    name: str
    mode: str
    dir: Path
    tokens: dict[int, str] = field(default_factory=dict)  # pid -> token (shared_lora_ti)
    unet: object | None = None  # dreambooth: the fine-tuned UNet


@dataclass
class _Resident:
    base_unet: object
    adapters: dict[str, LoadedAdapter] = field(default_factory=dict)
    active: str | None = None
    scale: float = 1.0


_RESIDENT: "weakref.WeakKeyDictionary[object, _Resident]" = weakref.WeakKeyDictionary()


def _resident(pipe) -> _Resident:
    if pipe not in _RESIDENT:
        _RESIDENT[pipe] = _Resident(base_unet=pipe.unet)
    return _RESIDENT[pipe]


def read_adapter_meta(adapter_dir: str | Path) -> dict:
    folder = Path(adapter_dir)
    meta_path = folder / ADAPTER_JSON
    if not meta_path.is_file():
        raise AdapterError(f"{folder} is not an identity adapter folder: expected {ADAPTER_JSON} "
                           "(written by train_identity_adapter / train_shared_lora_ti)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise AdapterError(f"{meta_path} is not valid JSON: {err}") from None
    mode = meta.get("mode")
    needed = {"lora": [LORA_FILE], "dreambooth": [f"{UNET_DIR}/config.json"],
              "shared_lora_ti": [LORA_FILE, TOKENS_FILE, TOKENS_JSON]}.get(mode)
    if needed is None:
        raise AdapterError(f"{meta_path}: mode {mode!r}, expected one of lora, dreambooth, shared_lora_ti")
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise AdapterError(f"{folder}: {mode} adapter is missing {', '.join(missing)}")
    return meta


def loaded_adapters(pipe) -> dict[str, LoadedAdapter]:
    return dict(_resident(pipe).adapters)


def active_adapter(pipe) -> str | None:
    return _resident(pipe).active


@contextmanager
def _quiet_transformers():
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():  # several resident adapters in one model are the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        transformers_logging.set_verbosity(level)


def load_identity_adapter(pipe, adapter_dir: str | Path, name: str) -> LoadedAdapter:
    """Make the adapter in ``adapter_dir`` resident under ``name``; the active adapter does not change."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    res = _resident(pipe)
    folder = Path(adapter_dir)
    if name in res.adapters:
        if res.adapters[name].dir.resolve() == folder.resolve():
            return res.adapters[name]
        raise AdapterError(f"adapter name {name!r} is already loaded from {res.adapters[name].dir}; "
                           "delete it first or choose another name")
    meta = read_adapter_meta(folder)
    entry = LoadedAdapter(name=name, mode=meta["mode"], dir=folder)
    if entry.mode == "dreambooth":
        entry.unet = UNet2DConditionModel.from_pretrained(folder, subfolder=UNET_DIR, dtype=res.base_unet.dtype,
                                                          local_files_only=True).to(res.base_unet.device).eval()
        entry.unet.requires_grad_(False)
    else:
        previous = res.active
        if pipe.unet is not res.base_unet:
            pipe.unet = res.base_unet
        if entry.mode == "shared_lora_ti":
            tokens = json.loads((folder / TOKENS_JSON).read_text())
            clash = [t for t in tokens if t in pipe.tokenizer.get_vocab()]
            if clash:
                raise AdapterError(f"{folder}: tokens {clash[:3]} already exist in the pipeline's tokenizer "
                                   "(another shared adapter with the same token template is loaded)")
            rows = load_file(folder / TOKENS_FILE)
            missing = [t for t in tokens if t not in rows]
            if missing:
                raise AdapterError(f"{folder / TOKENS_FILE}: no embedding for tokens {missing[:3]}")
            dtype = pipe.text_encoder.dtype
            pipe.load_textual_inversion([rows[t].to(dtype) for t in tokens], token=list(tokens))
            entry.tokens = {int(pid): token for token, pid in tokens.items()}
        with _quiet_transformers():  # its load report lists every base weight as MISSING for a text-encoder LoRA
            pipe.load_lora_weights(folder, weight_name=LORA_FILE, adapter_name=name)
        res.adapters[name] = entry
        _apply(pipe, res, previous, res.scale)
        return entry
    res.adapters[name] = entry
    return entry


def _mode(res: _Resident, name: str) -> str:
    return res.adapters[name].mode


def _has_lora(res: _Resident) -> bool:
    return any(a.mode != "dreambooth" for a in res.adapters.values())


def _disable_lora(pipe) -> None:
    res = _resident(pipe)
    if _has_lora(res):
        unet = pipe.unet
        pipe.unet = res.base_unet
        pipe.disable_lora()
        pipe.unet = unet


def _apply(pipe, res: _Resident, name: str | None, scale: float) -> None:
    if name is None:
        _disable_lora(pipe)
        pipe.unet = res.base_unet
    elif _mode(res, name) == "dreambooth":
        _disable_lora(pipe)
        pipe.unet = res.adapters[name].unet
    else:
        pipe.unet = res.base_unet
        pipe.enable_lora()
        pipe.set_adapters([name], adapter_weights=[scale])
    res.active, res.scale = name, scale


def activate(pipe, name: str, scale: float = 1.0) -> None:
    """Make ``name`` the only active adapter (``scale`` weights a LoRA; ignored for dreambooth)."""
    res = _resident(pipe)
    if name not in res.adapters:
        raise AdapterError(f"adapter {name!r} is not loaded in this pipeline; loaded: {sorted(res.adapters)}")
    if res.active == name and res.scale == scale:
        return
    _apply(pipe, res, name, scale)


def deactivate(pipe) -> None:
    """Back to the base model: every LoRA disabled, the base UNet in place."""
    res = _resident(pipe)
    if res.active is not None or pipe.unet is not res.base_unet:
        _apply(pipe, res, None, 1.0)


def delete_adapter(pipe, name: str) -> None:
    """Drop ``name`` from the pipeline and free its weights (and its tokens, for shared_lora_ti)."""
    res = _resident(pipe)
    if name not in res.adapters:
        raise AdapterError(f"adapter {name!r} is not loaded in this pipeline; loaded: {sorted(res.adapters)}")
    if res.active == name:
        deactivate(pipe)
    entry = res.adapters[name]
    if entry.mode != "dreambooth":
        unet = pipe.unet
        pipe.unet = res.base_unet
        pipe.delete_adapters([name])
        pipe.unet = unet
        if entry.tokens:
            pipe.unload_textual_inversion(list(entry.tokens.values()))
    entry.unet = None
    del res.adapters[name]


def reset_training_state(pipe) -> tuple[str | None, float]:
    """For trainers: remember the active adapter, then switch to the base model."""
    res = _resident(pipe)
    state = (res.active, res.scale)
    deactivate(pipe)
    return state


def restore_training_state(pipe, state: tuple[str | None, float]) -> None:
    res = _resident(pipe)
    name, scale = state
    if name is None:
        deactivate(pipe)
    else:
        _apply(pipe, res, name, scale)
