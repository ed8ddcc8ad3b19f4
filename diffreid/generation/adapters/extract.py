"""A DreamBooth UNet stored as a LoRA: the truncated SVD of each weight's fine-tuning delta.

A full DreamBooth UNet is 1.7-3.4 GB per identity for SD-1.5; the delta of its Linear and Conv2d weights,
kept to ``rank`` singular values, is a few MB and loads through the stock diffusers LoRA loader
(``pipe.load_lora_weights``), so the identity switches like any LoRA. What it cannot hold: changes of
biases and normalisation weights, and the singular values past ``rank`` (``ExtractionReport`` says how much
of the deltas was kept).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

EXTRACTABLE = (torch.nn.Linear, torch.nn.Conv2d)


@dataclass
class ExtractionReport:
    layers: int = 0
    kept_energy: float = 1.0          # share of the deltas' squared Frobenius norm the kept singular values hold
    unchanged_layers: int = 0
    lost: list[str] = field(default_factory=list)   # changed parameters a LoRA cannot hold (biases, norms)


def _delta_matrix(tuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    return (tuned.float() - base.float()).reshape(tuned.shape[0], -1)


def extract_lora(base_state: Mapping[str, torch.Tensor], tuned_unet, rank: int, min_relative_change: float = 1e-6):
    """(peft-format LoRA state dict, peft LoraConfig, ExtractionReport) approximating ``tuned_unet`` as the base
    weights (``base_state``: the base UNet's plain state dict) + a rank-``rank`` update of every Linear/Conv2d
    weight that changed."""
    from peft import LoraConfig

    state: dict[str, torch.Tensor] = {}
    targets: list[str] = []
    report = ExtractionReport()
    total = kept = 0.0
    for name, module in tuned_unet.named_modules():
        if not isinstance(module, EXTRACTABLE):
            continue
        base = base_state[f"{name}.weight"].detach()
        delta = _delta_matrix(module.weight.detach(), base)
        scale = float(base.float().norm()) or 1.0
        if float(delta.norm()) <= min_relative_change * scale:
            report.unchanged_layers += 1
            continue
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, len(s))
        total += float((s ** 2).sum())
        kept += float((s[:r] ** 2).sum())
        root = s[:r].sqrt()
        up = u[:, :r] * root                      # (out, r)
        down = root[:, None] * vh[:r]             # (r, in * kh * kw)
        if isinstance(module, torch.nn.Conv2d):
            up = up[:, :, None, None]
            down = down.reshape(r, *module.weight.shape[1:])
        dtype = base.dtype
        state[f"{name}.lora_A.weight"] = down.to(dtype).contiguous()
        state[f"{name}.lora_B.weight"] = up.to(dtype).contiguous()
        targets.append(name)
        report.layers += 1
    stored = {f"{name}.weight" for name in targets}
    for name, param in tuned_unet.named_parameters():
        if name not in stored and not torch.equal(param.detach().float(), base_state[name].detach().float()):
            report.lost.append(name)
    report.kept_energy = kept / total if total else 1.0
    # layers whose delta has fewer singular values than `rank` keep their own rank (alpha = rank everywhere: the
    # stored factors carry the scale)
    small = {n: int(state[f"{n}.lora_A.weight"].shape[0]) for n in targets
             if state[f"{n}.lora_A.weight"].shape[0] < rank}
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False,
                        rank_pattern=small, alpha_pattern=small)
    return state, config, report
