"""DiVE VI expansion on the toy world with the tiny model (CPU): modality adapter, IR generation into a SYSU tree,
cross-modal filter scores, resume, bad input, and the SYSU / RegDB protocols against plain reference code."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from diffreid.cli import main
from diffreid.config import ConfigError
from diffreid.data import load_dataset
from diffreid.data.toyworld import ToyWorldConfig, render_world
from diffreid.data.types import DatasetError
from diffreid.reid.vi_metrics import evaluate_regdb, evaluate_sysu, sample_gallery
from diffreid.vi import Generated, SysuExpansionWriter, VIExpandConfig, expand_vi

VI_WORLD = dict(layout="sysu", cams=6, ir_cams=[3, 6], ids_train=4, ids_val=1, ids_test=3, images_per_cam=[1, 2],
                height=64, width=32, seed=0)
RGB_WORLD = dict(layout="market", cams=3, ids_train=3, ids_test=1, images_per_cam=[2, 2], height=64, width=32,
                 seed=1, cam_offset=20)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory, tiny_pipeline_dir):
    import torch

    torch.set_num_threads(2)
    base = tmp_path_factory.mktemp("vi_worlds")
    vi = render_world(ToyWorldConfig(**VI_WORLD), base / "vi", progress=False)
    rgb = render_world(ToyWorldConfig(**RGB_WORLD), base / "rgb", progress=False)
    return {"vi": vi, "rgb": rgb, "tiny": tiny_pipeline_dir, "base": base}


def small_config(worlds, **extra) -> dict:
    cfg = {
        "vi_root": str(worlds["vi"]), "rgb_dataset": "market_layout", "rgb_root": str(worlds["rgb"]),
        "rgb_options": {"splits": ["train"]}, "train_images_per_id": 2,
        "pipeline": {"path": str(worlds["tiny"])},
        "adapter": {"mode": "shared_lora_ti", "prior_loss_weight": 0.0, "rank": 2, "alpha": 2.0, "steps": 3,
                    "instance_batch_size": 4, "height": 64, "width": 32},
        "sampler": {"steps": 2, "guidance": 2.0, "height": 64, "width": 32, "output_height": 64, "output_width": 32,
                    "batch_size": 8, "phrases_per_prompt": 0, "init_strength": 0.6},
        "ir_images_per_id": 3, "rgb_images_per_id": 1, "ids_per_chunk": 2,
        "filter": {"threshold": 0.0},
        "scorer": {"eval_trials": 2, "train": {"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 2,
                                               "K": 2, "epochs": 1, "iters_per_epoch": 2, "warmup_epochs": 0,
                                               "milestones": [], "pad": 2, "num_workers": 0}},
        "runtime": {"device": "cpu", "seed": 0},
    }
    cfg["fidelity_reader"] = {"train": {**cfg["scorer"]["train"], "runtime": {"device": "cpu", "seed": 1}}}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def expanded(worlds):
    """One CLI run on the small toy setup; the tests below read its output."""
    cfg_path = worlds["base"] / "vi.yaml"
    cfg_path.write_text(yaml.safe_dump(small_config(worlds)))
    out = worlds["base"] / "out"
    assert main(["vi-expand", "--config", str(cfg_path), "--out", str(out), "--quiet"]) == 0
    return {"out": out, "cfg": cfg_path, "summary": json.loads((out / "summary.json").read_text())}


# ----------------------------------------------------------------------------------------------------------
# modality adapter, tree, manifest, filter, resume
# ----------------------------------------------------------------------------------------------------------
def test_modality_adapter_and_tokens_train_and_save(expanded, worlds):
    from diffusers import StableDiffusionPipeline

    from diffreid.generation.adapters import read_adapter_meta

    adapter = expanded["out"] / "adapter"
    meta = read_adapter_meta(adapter)
    assert meta["mode"] == "shared_lora_ti" and meta["steps"] == 3
    assert len(json.loads((adapter / "losses.json").read_text())) == 3
    vi_ids = {r.pid for r in load_dataset("sysu_mm01", worlds["vi"]).train}
    new_pids = set(range(expanded["summary"]["new_pids"][0], expanded["summary"]["new_pids"][1] + 1))
    token_pids = set(json.loads((adapter / "tokens.json").read_text()).values())
    assert token_pids == vi_ids | new_pids and len(new_pids) == 3
    prompts = meta["prompts"]["instance"]
    assert "a infrared cam3 photo of <id-0001> person" in prompts or "a infrared cam6 photo of <id-0001> person" in prompts
    assert any(p.startswith("a visible cam") and "<id-0001>" in p for p in prompts)
    assert {f"a visible photo of <id-{p:04d}> person" for p in new_pids} <= set(prompts)
    # the LoRA file is diffusers-standard: a stock pipeline loads it and its output changes
    pipe = StableDiffusionPipeline.from_pretrained(worlds["tiny"], safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    import torch

    def draw():
        return pipe("a infrared photo of person", num_inference_steps=2, height=64, width=32, output_type="np",
                    generator=torch.Generator().manual_seed(0)).images
    before = draw()
    pipe.load_lora_weights(adapter, weight_name="pytorch_lora_weights.safetensors", adapter_name="vi")
    assert not np.allclose(before, draw())


def test_ir_generation_writes_a_sysu_tree_the_reader_reads(expanded, worlds):
    out, s = expanded["out"], expanded["summary"]
    ds = load_dataset("sysu_mm01", out)
    src = load_dataset("sysu_mm01", worlds["vi"])
    new_pids = list(range(s["new_pids"][0], s["new_pids"][1] + 1))
    assert min(new_pids) == max(r.pid for r in src.train + src.query) + 1  # above every VI id
    assert s["expanded_ids"] == 3 and s["generated"] == 3 * (3 + 1)
    for pid in new_pids:
        recs = [r for r in ds.train if r.pid == pid]
        ir = [r for r in recs if r.modality == "ir"]
        assert len(ir) == 3 and {r.camid for r in ir} == {2, 5}  # round-robin over cameras 3 and 6
        assert {r.camid for r in recs if r.modality == "rgb"} <= {0, 1, 3, 4}
        assert Image.open(ir[0].path).size == (32, 64)
    # the VI dataset itself is unchanged inside the expanded tree
    assert sorted((r.pid, r.camid) for r in ds.query) == sorted((r.pid, r.camid) for r in src.query)
    assert {r.pid for r in ds.train} == {r.pid for r in src.train} | set(new_pids)
    assert len(ds.train) == len(src.train) + 3 * (3 + 1) + s["source_copied"]
    # RGB source images of each identity were copied, one file per source image
    rgb_src = load_dataset("market_layout", worlds["rgb"], splits=["train"])
    assert s["source_copied"] == len(rgb_src.train)


def test_manifest_columns_scores_and_pid_map(expanded, worlds):
    out = expanded["out"]
    df = pd.read_parquet(out / "manifest.parquet")
    for col in ("file", "pid", "camid", "source_dataset", "source_pid", "prompt", "seed", "adapter", "base_model",
                "scheduler", "steps", "guidance", "score_reid_ctf", "kept"):
        assert col in df.columns, col
    gen = df[df.origin == "generated"]
    assert gen["score_reid_ctf"].between(0, 1).all() and gen["kept"].all()
    assert gen["prompt"].str.contains("infrared cam[36] photo of <id-", regex=True).sum() == 9
    assert (gen["base_model"] == str(worlds["tiny"])).all()
    assert df[df.origin == "source"]["score_reid_ctf"].isna().all()
    import hashlib

    for row in df.itertuples():
        assert hashlib.sha256((out / row.file).read_bytes()).hexdigest() == row.sha256
    pid_map = json.loads((out / "pid_map.json").read_text())
    mapped = {e["pid"]: e["source_pid"] for e in pid_map["entries"]}
    assert set(mapped.values()) == {1, 2, 3} and set(df["pid"]) == set(mapped)
    assert all(mapped[p] == s for p, s in zip(df["pid"], df["source_pid"]))


def test_ir_images_start_from_the_identitys_own_visible_crops_and_are_read_back(expanded):
    out, s = expanded["out"], expanded["summary"]
    df = pd.read_parquet(out / "manifest.parquet")
    sources = df[df.origin == "source"].groupby("pid")["source_path"].apply(set)
    gen = df[df.origin == "generated"]
    assert (gen["init_image"] != "").all()
    assert all(row.init_image in sources[row.pid] for row in gen.itertuples())
    fid = s["fidelity"]
    assert fid["ir_images"] == int((gen["modality"] == "ir").sum()) == 9
    assert fid["identities"] == 3 and fid["chance"] == pytest.approx(1 / 3)
    assert 0.0 <= fid["rank1_all"] <= 1.0 and fid["kept"] == 9 and fid["kept_fraction"] == 1.0
    assert Path(fid["reader"]).name == "fidelity-reader" and (Path(fid["reader"]) / "reid_model.json").is_file()


def test_gain_trains_on_real_expanded_and_control_sets(expanded):
    from diffreid.vi.gain import gain_table, vi_gain

    rows = vi_gain(expanded["out"], seeds=[0], epochs=1)
    (a, ra), (b, rb), (c, rc) = rows.items()
    assert rb["ids"] == ra["ids"] + 3 and rc["ids"] == rb["ids"]
    assert rb["generated_ir"] == 9 and rc["generated_ir"] == 0 and rc["images"] == rb["images"] - 9
    assert all(0.0 <= v[0] <= 1.0 for r in rows.values() for k, v in r.items() if isinstance(v, list))
    table = gain_table(rows)
    assert table.count("\n") == 4 and "sysu_all mAP" in table and "control" in table
    from diffreid.study import format_vi

    section = "\n".join(format_vi({"summary": expanded["summary"], "table": table}))
    assert "3/3 RGB identities expanded" in section and "Fidelity" in section and table in section


def test_rerun_resumes_without_duplicates(expanded, worlds):
    out = expanded["out"]
    before = pd.read_parquet(out / "manifest.parquet")
    cfg = VIExpandConfig.load(expanded["cfg"])
    result = expand_vi(cfg, out)
    assert result.summary["generation"]["identities_this_run"] == 0
    after = pd.read_parquet(out / "manifest.parquet")
    assert after["file"].tolist() == before["file"].tolist()
    assert result.summary["scorer"]["train_seconds"] == 0 and result.summary["adapter"]["seconds"] == 0


def test_lpe_captions_follow_every_prompt_of_both_modalities(expanded, worlds):
    """With ``lpe`` set, each identity's caption of its visible images follows the modality/token prompt in
    training (VI identities' IR and visible images, RGB identities') and in IR sampling."""
    from diffreid.generation.adapters import read_adapter_meta

    captioned = small_config(worlds, lpe={"captioner": "template", "template_caption": "a person in a red shirt"},
                             ir_images_per_id=1, rgb_images_per_id=0, fidelity_reader=None)
    captioned["adapter"]["steps"] = 1
    captioned["scorer"] = {"model_dir": str(expanded["out"] / "scorer"), "evaluate": False}
    out = worlds["base"] / "out-lpe"
    summary = expand_vi(VIExpandConfig.model_validate(captioned), out).summary
    assert summary["captions"] == {"identities": 5 + 3, "example": "a person in a red shirt"}
    prompts = read_adapter_meta(out / "adapter")["prompts"]["instance"]
    assert "a infrared cam3 photo of <id-0001> person, a person in a red shirt" in prompts or \
        "a infrared cam6 photo of <id-0001> person, a person in a red shirt" in prompts
    assert all(p.endswith(", a person in a red shirt") for p in prompts)
    gen = pd.read_parquet(out / "manifest.parquet").query("origin == 'generated'")
    assert len(gen) == 3 and gen["prompt"].str.endswith("person, a person in a red shirt").all()


@pytest.mark.ray
def test_ray_job_runs_the_same_function(expanded):
    """The Ray entrypoint (a local cluster on 127.0.0.1) resumes the finished output: nothing is regenerated."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-m", "ray_jobs.expand_vi", "--config", str(expanded["cfg"]), "--out",
                           str(expanded["out"])], capture_output=True, text=True, timeout=300, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "VI expansion in" in proc.stdout
    summary = json.loads((expanded["out"] / "summary.json").read_text())
    assert summary["generation"]["identities_this_run"] == 0
    assert summary["expanded_ids"] == expanded["summary"]["expanded_ids"]
    bad = subprocess.run([sys.executable, "-m", "ray_jobs.expand_vi", "--config", str(expanded["cfg"]), "--out",
                          str(expanded["out"]), "--set", "adapter.mode=lora"], capture_output=True, text=True,
                         timeout=120, env=env, cwd=Path(__file__).resolve().parents[1])
    assert bad.returncode == 2 and "shared_lora_ti" in bad.stderr


def test_writer_clears_a_crashed_identity(worlds, tmp_path):
    writer = SysuExpansionWriter(tmp_path / "out", worlds["vi"])
    (pid,) = writer.assign_pids([("toy", 7)])
    stale = tmp_path / "out" / "cam3" / f"{pid:04d}" / "0009.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half")
    (tmp_path / "out" / "manifest").mkdir()
    (tmp_path / "out" / "manifest" / f"pending-{pid:06d}-s1").write_text("")
    img = Image.new("RGB", (32, 64), (90, 90, 90))
    rec = {"prompt": "p", "seed": 1, "adapter": "a", "scheduler": "ddim", "steps": 2, "guidance": 1.0}
    rows = writer.write_identity(pid, [], [Generated(img, 3, "ir", rec, {"reid_ctf": 0.9}, True)], expanded=True)
    assert rows == 1 and not stale.exists()
    assert writer.write_identity(pid, [], [], expanded=True) == 0  # committed: a no-op


def test_toy_config_loads_and_fills_runtime():
    cfg = VIExpandConfig.load(Path(__file__).resolve().parents[1] / "configs" / "toy-vi.yaml",
                              overrides=["runtime.device=cpu"])
    assert cfg.vi_toyworld is not None and cfg.vi_root == "" and cfg.adapter.mode == "shared_lora_ti"
    assert cfg.adapter.runtime.device == cfg.pipeline.runtime.device == cfg.scorer.train.runtime.device == "cpu"


# ----------------------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------------------
def test_vi_dataset_without_ir_images_is_a_clear_error(worlds, tmp_path):
    vi = tmp_path / "vi_no_ir"
    shutil.copytree(worlds["vi"], vi)
    train_ids = (vi / "exp" / "train_id.txt").read_text().strip().split(",")
    train_ids += (vi / "exp" / "val_id.txt").read_text().strip().split(",")
    for cam in (3, 6):
        for pid in train_ids:
            shutil.rmtree(vi / f"cam{cam}" / f"{int(pid):04d}", ignore_errors=True)
    cfg = VIExpandConfig.model_validate(small_config(worlds, vi_root=str(vi)))
    with pytest.raises(DatasetError, match="no infrared images"):
        expand_vi(cfg, tmp_path / "out")


def test_pid_collisions_are_clear_errors(worlds, tmp_path):
    cfg = VIExpandConfig.model_validate(small_config(worlds, new_pid_start=3))
    with pytest.raises(DatasetError, match="pid collision: new_pid_start=3"):
        expand_vi(cfg, tmp_path / "out")
    # an output whose pid map hands out an id the VI dataset uses
    out = tmp_path / "out2"
    out.mkdir()
    (out / "pid_map.json").write_text(json.dumps({"new_pid_start": 2, "entries": [
        {"pid": 2, "source_dataset": "market_layout", "source_pid": 1}]}))
    with pytest.raises(DatasetError, match="pid collision"):
        SysuExpansionWriter(out, worlds["vi"], new_pid_start=None)


def test_missing_folders_and_bad_config(worlds, tmp_path, capsys):
    cfg = VIExpandConfig.model_validate(small_config(worlds, vi_root=str(tmp_path / "nope")))
    with pytest.raises(DatasetError, match="dataset root not found"):
        expand_vi(cfg, tmp_path / "out")
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(yaml.safe_dump(small_config(worlds, rgb_root=str(tmp_path / "missing_rgb"))))
    assert main(["vi-expand", "--config", str(cfg_file), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "missing_rgb" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="shared_lora_ti"):
        VIExpandConfig.load(None, overrides=["adapter.mode=lora"])
    with pytest.raises(ConfigError, match="token"):
        VIExpandConfig.load(None, overrides=["prompt_template=a {modality} photo"])
    with pytest.raises(ConfigError, match="vi_root is empty"):
        expand_vi(VIExpandConfig(), tmp_path / "o3")


# ----------------------------------------------------------------------------------------------------------
# protocols against plain reference code
# ----------------------------------------------------------------------------------------------------------
def reference_scores(dist, q_pids, g_pids, q_cams, g_cams, gallery_cams, sysu_rule):
    """Per query: drop gallery items outside ``gallery_cams``, same pid+camera, and (SYSU) same-pid camera-2
    items for a camera-3 query; rank by distance; AP, INP, first-hit rank."""
    aps, inps, firsts = [], [], []
    for i in range(len(q_pids)):
        keep = [j for j in range(len(g_pids)) if g_cams[j] in gallery_cams
                and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])
                and not (sysu_rule and q_cams[i] == 2 and g_cams[j] == 1 and g_pids[j] == q_pids[i])]
        order = sorted(keep, key=lambda j: dist[i, j])
        hits = [k for k, j in enumerate(order) if g_pids[j] == q_pids[i]]
        if not hits:
            continue
        aps.append(np.mean([(n + 1) / (k + 1) for n, k in enumerate(hits)]))
        inps.append(len(hits) / (hits[-1] + 1))
        firsts.append(hits[0])
    return {"mAP": np.mean(aps), "mINP": np.mean(inps), "Rank-1": np.mean(np.array(firsts) < 1),
            "Rank-5": np.mean(np.array(firsts) < 5)}


@pytest.fixture()
def sysu_case():
    rng = np.random.default_rng(3)
    q_pids, q_cams, g_pids, g_cams = [], [], [], []
    for pid in range(1, 7):
        for cam in (2, 5):
            q_pids += [pid] * 2
            q_cams += [cam] * 2
        for cam in (0, 1, 3, 4):
            n = int(rng.integers(1, 4))
            g_pids += [pid] * n
            g_cams += [cam] * n
    q_pids, q_cams, g_pids, g_cams = map(np.array, (q_pids, q_cams, g_pids, g_cams))
    dist = rng.permutation(len(q_pids) * len(g_pids)).reshape(len(q_pids), len(g_pids)).astype(np.float32)
    # camera-3 queries sit right next to their own camera-2 images: the SYSU rule must remove them
    same_room = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == 2) & (g_cams[None, :] == 1)
    dist[same_room] = -1.0 - rng.random(same_room.sum())
    return dist, q_pids, g_pids, q_cams, g_cams


def test_sysu_protocol_matches_reference(sysu_case):
    dist, q_pids, g_pids, q_cams, g_cams = sysu_case
    for mode, cams in (("all", (0, 1, 3, 4)), ("indoor", (0, 1))):
        got = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, mode=mode, shots=None).metrics
        ref = reference_scores(dist, q_pids, g_pids, q_cams, g_cams, cams, sysu_rule=True)
        for key, value in ref.items():
            assert got[key] == pytest.approx(value), (mode, key)
        plain = reference_scores(dist, q_pids, g_pids, q_cams, g_cams, cams, sysu_rule=False)
        assert plain["mAP"] != pytest.approx(got["mAP"])  # the camera-3/camera-2 rule is in effect


def test_sysu_single_shot_trials(sysu_case):
    dist, q_pids, g_pids, q_cams, g_cams = sysu_case
    res = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, mode="all", shots=1, trials=4, seed=0)
    assert len(res.trials) == 4
    for cols, trial in zip(res.gallery_indices, res.trials):
        groups = list(zip(g_pids[cols], g_cams[cols]))
        assert len(groups) == len(set(groups)) == len(set(zip(g_pids, g_cams)))  # one image per (pid, camera)
        sub = reference_scores(dist[:, cols], q_pids, g_pids[cols], q_cams, g_cams[cols], (0, 1, 3, 4), True)
        assert trial["mAP"] == pytest.approx(sub["mAP"]) and trial["Rank-1"] == pytest.approx(sub["Rank-1"])
    assert res.metrics["mAP"] == pytest.approx(np.mean([t["mAP"] for t in res.trials]))
    assert len({tuple(c) for c in res.gallery_indices}) > 1  # the draws differ between trials
    again = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, mode="all", shots=1, trials=4, seed=0)
    assert again.metrics == res.metrics
    with pytest.raises(ValueError, match="infrared"):
        evaluate_sysu(dist, q_pids, g_pids, np.zeros_like(q_cams), g_cams)
    picked = sample_gallery(g_pids, g_cams, 2, np.random.default_rng(0))
    counts = pd.Series(list(zip(g_pids[picked], g_cams[picked]))).value_counts()
    assert counts.max() <= 2


def test_regdb_both_directions_match_reference():
    rng = np.random.default_rng(5)
    pids = np.repeat(np.arange(1, 6), 3)
    vis = rng.normal(size=(len(pids), 8)).astype(np.float32)
    thermal = (vis + rng.normal(scale=1.5, size=vis.shape)).astype(np.float32)
    from diffreid.reid.metrics import compute_distmat

    for direction, (qf, gf) in (("visible_to_thermal", (vis, thermal)), ("thermal_to_visible", (thermal, vis))):
        got = evaluate_regdb(vis, pids, thermal, pids, direction)
        dist = compute_distmat(qf, gf)
        ref = reference_scores(dist, pids, pids, np.zeros_like(pids), np.ones_like(pids), (1,), sysu_rule=False)
        for key, value in ref.items():
            assert got[key] == pytest.approx(value), (direction, key)
    assert evaluate_regdb(vis, pids, thermal, pids, "visible_to_thermal") != evaluate_regdb(
        vis, pids, thermal, pids, "thermal_to_visible")
