"""Fine-tune + evaluate in the paper's settings: exact seeded Fs/Ss splits, a full setting x init table."""
from collections import Counter

import pandas as pd
import pytest

from diffreid.config import ConfigError
from diffreid.data import load_dataset
from diffreid.data.toyworld import ToyWorldConfig, render_world
from diffreid.data.types import ImageRecord
from diffreid.reid.finetune import (FinetuneEvalConfig, fewshot_images, planned_runs, run_finetune_eval,
                                    smallscale_ids)


def records(n_ids=20, per_id=10):
    return [ImageRecord(f"/x/{pid:04d}_{i}.jpg", pid, i % 3) for pid in range(1, n_ids + 1) for i in range(per_id)]


@pytest.mark.parametrize("percent", [10, 30, 50, 70, 90])
def test_fewshot_keeps_exact_fraction_per_identity(percent):
    recs = records()
    kept = fewshot_images(recs, percent, seed=1)
    assert Counter(r.pid for r in kept) == {pid: percent // 10 for pid in range(1, 21)}
    assert set(kept) <= set(recs)
    assert fewshot_images(recs, percent, seed=1) == kept
    if percent < 90:
        assert fewshot_images(recs, percent, seed=2) != kept


@pytest.mark.parametrize("percent", [10, 30, 50, 70, 90])
def test_smallscale_keeps_exact_fraction_of_identities(percent):
    recs = records()
    kept = smallscale_ids(recs, percent, seed=1)
    pids = {r.pid for r in kept}
    assert len(pids) == 20 * percent // 100
    assert all(sum(r.pid == p for r in kept) == 10 for p in pids)  # whole identities
    assert smallscale_ids(recs, percent, seed=1) == kept
    if percent < 90:
        assert {r.pid for r in smallscale_ids(recs, percent, seed=7)} != pids


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="fractions"):
        FinetuneEvalConfig.load(target={"root": str(tmp_path)}, fractions=[0, 50])
    # files are checked by the stage's check step (`diffreid check`, run_stage) and before the first run
    cfg = FinetuneEvalConfig.load(target={"root": str(tmp_path)}, inits={"mine": str(tmp_path / "nope.safetensors")})
    assert cfg.missing_files() == [f"inits.mine: weight file {tmp_path / 'nope.safetensors'} does not exist"]
    with pytest.raises(ConfigError, match="inits.mine"):
        run_finetune_eval(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists(), "nothing runs before the files are checked"


@pytest.mark.slow
def test_results_table_has_every_setting_and_init(tmp_path):
    from diffreid.reid.pretrain import PretrainConfig, pretrain_in_process

    world = render_world(ToyWorldConfig(ids_train=8, ids_test=6, cams=3, height=64, width=32, seed=5),
                         tmp_path / "world")
    other = render_world(ToyWorldConfig(ids_train=2, ids_test=5, cams=3, height=64, width=32, seed=6,
                                        pid_offset=100, cam_offset=3), tmp_path / "other")
    pre = PretrainConfig.load(overrides=["backbone=resnet18", "height=64", "width=32", "epochs=1",
                                         "warmup_epochs=0", "batch_size=16", "loader_workers=0"])
    weights = pretrain_in_process(pre, load_dataset("market_layout", world).train, tmp_path / "pre", progress=False)
    cfg = FinetuneEvalConfig.load(
        target={"root": str(world)}, cross_domain={"root": str(other)},
        settings=["supervised", "fs", "ss", "cross_domain"], fractions=[50], seeds=[0],
        inits={"random": None, "pretrained": str(weights)},
        train={"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 4, "K": 2, "epochs": 1,
               "warmup_epochs": 0, "milestones": [5], "num_workers": 0, "pad": 2})
    assert len(planned_runs(cfg)) == 2 * 3
    df = run_finetune_eval(cfg, tmp_path / "out", progress=False)
    cells = {(r.setting, r.percent, r.init) for r in df.itertuples()}
    assert cells == {(s, p, i) for i in ("random", "pretrained")
                     for s, p in [("supervised", 100), ("cross_domain", 100), ("fs", 50), ("ss", 50)]}
    assert df[["mAP", "Rank-1", "mINP"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (df[df.setting == "ss"].train_ids == 4).all()
    md = (tmp_path / "out" / "results.md").read_text()
    assert "random mAP/R1" in md and "pretrained mAP/R1" in md and "| fs | 50 |" in md
    assert pd.read_csv(tmp_path / "out" / "results.csv").shape[0] == 8
    assert not (tmp_path / "out" / "results.png").exists(), "one p% point per setting: no curve to draw"


def test_smallscale_subset_with_fewer_identities_than_P_trains(tmp_path):
    """Ss 25% of 8 identities is 2, fewer than P=4: the run caps P at 2 instead of failing mid-study."""
    from diffreid.reid.finetune import run_one

    world = render_world(ToyWorldConfig(ids_train=8, ids_test=4, cams=2, height=64, width=32, seed=5),
                         tmp_path / "world")
    cfg = FinetuneEvalConfig.load(
        target={"root": str(world)}, settings=["ss"], fractions=[25], seeds=[0],
        train={"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 4, "K": 2, "epochs": 1,
               "warmup_epochs": 0, "milestones": [5], "num_workers": 0, "pad": 2, "iters_per_epoch": 2})
    (row,) = run_one(cfg, planned_runs(cfg)[0])
    assert row["setting"] == "ss" and row["train_ids"] == 2 and 0 <= row["mAP"] <= 1


def test_finetune_resumes_from_its_run_log(tmp_path):
    """Finished runs are kept in OUT/runs.jsonl: a re-run with one more seed runs only that seed; a torn last
    line (a crash mid-write) and lines of another training config are ignored."""
    import json

    world = render_world(ToyWorldConfig(ids_train=4, ids_test=4, cams=2, height=64, width=32, seed=5),
                         tmp_path / "world")
    base = dict(target={"root": str(world)}, settings=["ss"], fractions=[50],
                train={"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 2, "K": 2, "epochs": 1,
                       "warmup_epochs": 0, "milestones": [5], "num_workers": 0, "pad": 2, "iters_per_epoch": 1})
    out = tmp_path / "out"
    first = run_finetune_eval(FinetuneEvalConfig.load(seeds=[0], **base), out, progress=False)
    log = out / "runs.jsonl"
    assert len(log.read_text().splitlines()) == 1
    with open(log, "a") as f:
        f.write('{"config": "torn')
    both = run_finetune_eval(FinetuneEvalConfig.load(seeds=[0, 1], **base), out, progress=False)
    entries = [json.loads(line) for line in log.read_text().splitlines() if not line.endswith("torn")]
    assert [e["run"]["seed"] for e in entries] == [0, 1], "seed 0 was run again"
    assert both.iloc[0]["mAP"] == first.iloc[0]["mAP"] and list(both["seed"]) == [0, 1]
    other = FinetuneEvalConfig.load(seeds=[0], **{**base, "train": {**base["train"], "lr": 0.01}})
    run_finetune_eval(other, out, progress=False)
    assert len(log.read_text().splitlines()) == 4  # seeds 0, 1, the torn line, seed 0 of the other config


def test_results_plot_draws_only_settings_with_a_curve(tmp_path):
    from diffreid.reid.finetune import METRIC_COLUMNS, write_results

    rows = [{"setting": setting, "percent": percent, "init": init, "seed": 0,
             **{m: 0.1 * percent / 100 for m in METRIC_COLUMNS}}
            for setting, percents in (("fs", (10, 30)), ("ss", (50,)), ("supervised", (100,)))
            for percent in percents for init in ("random", "diffperson")]
    files = write_results(pd.DataFrame(rows), tmp_path)
    assert files["png"].stat().st_size > 5000
    from PIL import Image

    with Image.open(files["png"]) as im:
        assert im.width < 1.2 * im.height * 4.5 / 3.5, "one panel (fs); the one-point ss panel is left out"
