"""GPU memory of one generator per adapter mode for SD-1.5 at 512x256 (diffreid.memory: parameters counted,
activations traced on the meta device), against a 24 GB and an 80 GB card. No GPU needed; ~30 s.

    python benchmarks/memory_plan.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = [  # (label, base config, overrides)
    ("LoRA rank 8, batch 4+4, bf16 (build-*-lora.yaml)", "build-market1501-lora.yaml", []),
    ("  same, fp32 weights", "build-market1501-lora.yaml", ["runtime.dtype=fp32"]),
    ("  same, gradient checkpointing", "build-market1501-lora.yaml", ["adapter.gradient_checkpointing=true"]),
    ("shared LoRA + tokens (DiVE), batch 4+4, bf16", "build-market1501-lora.yaml", ["adapter.mode=shared_lora_ti"]),
    ("DreamBooth, batch 1+1, bf16, checkpointing, 2 resident (build-*-paper.yaml)", "build-market1501-paper.yaml", []),
    ("  same, 8-bit Adam", "build-market1501-paper.yaml", ["adapter.optimizer=adamw8bit"]),
    ("  same, no checkpointing", "build-market1501-paper.yaml", ["adapter.gradient_checkpointing=false"]),
    ("  same, batch 4+4", "build-market1501-paper.yaml", ["adapter.instance_batch_size=4",
                                                          "adapter.prior_batch_size=4"]),
    ("  same, fp32 weights, 8 resident", "build-market1501-paper.yaml", ["runtime.dtype=fp32", "ray.adapter_cache=8"]),
]


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    from diffreid.distributed.build import RayBuildJobConfig
    from diffreid.memory import GIB, HEADROOM, plan_memory

    print(f"GPU memory of one generator, SD-1.5 at 512x256, sampling batch 16 with guidance (planned to "
          f"{HEADROOM:.0%} of the card)\n")
    print("| setting | weights + adapters GB | trained + optimiser GB | training activations GB | training GB "
          "| sampling GB | 24 GB | 80 GB |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for label, base, overrides in ROWS:
        plan = plan_memory(RayBuildJobConfig.load(str(ROOT / "configs" / "real" / base), overrides=overrides))
        resident = sum(v for k, v in plan.training.items() if k.startswith(("base", "resident", "CUDA")))
        trained = sum(v for k, v in plan.training.items() if k.startswith(("fp32", "optimiser")))
        act = sum(v for k, v in plan.training.items() if k.startswith("activations"))
        print(f"| {label} | {resident / GIB:.1f} | {trained / GIB:.1f} | {act / GIB:.1f} | "
              f"{plan.training_bytes / GIB:.1f} | {plan.sampling_bytes / GIB:.1f} | "
              f"{'fits' if plan.fits(24) else '**no**'} | {'fits' if plan.fits(80) else '**no**'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
