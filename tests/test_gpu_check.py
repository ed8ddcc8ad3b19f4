"""benchmarks/gpu_check.py: the GPU measurement script runs end to end at tiny size on CPU (--dry-run), so it
cannot rot before a GPU is at hand; without a GPU the full run refuses with one line."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_table(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out), "--work",
                           str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    for section in ("## Generation", "### Generation options", "## Adapter training", "## Adapter switching",
                    "## Filter", "## One generator actor per GPU (Ray)"):
        assert section in text
    assert "| fp32 | 2 |" in text and "| lora |" in text and "| dreambooth |" in text and "queries/s" in text
    assert "| channels-last (first call" in text
    lora_row = next(line for line in text.splitlines() if line.startswith("| lora |")).split("|")
    assert float(lora_row[6]) > 0, "the memory plan's estimate stands beside the measured peak"
    assert "| 0 | - | cpu |" in text, "one CPU actor without GPUs (on a GPU machine: one per GPU)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the full check runs instead")
def test_gpu_check_without_a_gpu_says_so(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path / "x.md")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--dry-run" in done.stderr and not (tmp_path / "x.md").exists()
