"""build_diff_person end to end on the toy world with the tiny model: layout, manifest, resume, bad input."""
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from diffreid.build import BuildConfig, build_diff_person, load_build_config
from diffreid.config import ConfigError
from diffreid.data import load_dataset
from diffreid.data.toyworld import ToyWorldConfig, render_world
from diffreid.diffperson.manifest import verify

FAST = ["adapter.steps=3", "adapter.checkpoint_every=2", "refset.num_images=4", "refset.steps=2",
        "sampler.num_images=4", "sampler.steps=2", "filter_reid.epochs=1", "filter_reid.P=4", "filter_reid.K=2",
        "fidelity.reader.epochs=1", "fidelity.reader.iters_per_epoch=2"]
REQUIRED = {"file", "pid", "camid", "source_dataset", "source_pid", "prompt", "seed", "adapter", "base_model",
            "scheduler", "steps", "guidance", "score_reid_ctf", "kept"}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = render_world(ToyWorldConfig(ids_train=6, ids_test=2, cams=3, height=64, width=32, seed=4),
                        tmp_path_factory.mktemp("src") / "world")
    counts = Counter(r.pid for r in load_dataset("market_layout", root).train)
    fewest = min(counts, key=counts.get)
    others = [p for p in sorted(counts) if counts[p] > counts[fewest]][:2]
    victim = sorted((root / "bounding_box_train").glob(f"{others[0]:04d}_*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:60])  # truncated JPEG
    (root / "bounding_box_train" / "notes.txt").write_text("not an image")
    return root, fewest, others, counts


def make_cfg(root, pids, min_images, *extra):
    return BuildConfig.load("configs/toy.yaml", overrides=FAST + list(extra), sources=[
        {"name": "toy", "root": str(root), "pids": pids, "min_images": min_images}])


@pytest.mark.slow
def test_build_writes_a_verified_market_layout_and_resumes(source, tmp_path):
    root, fewest, others, counts = source
    cfg = make_cfg(root, [fewest] + others, counts[fewest] + 1)
    with pytest.warns(UserWarning, match="1 unreadable or corrupt"):
        report = build_diff_person(cfg, tmp_path, progress=False)

    # layout: Market names, manifest columns, adapters in diffusers format, pid map, report
    assert report.name == "report.html" and report.is_file()
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    assert REQUIRED <= set(df.columns)
    assert sorted(df.source_pid.unique()) == sorted(others) and len(df) == 2 * 4
    assert df.score_reid_ctf.between(0, 1).all()
    assert (df.kept == (df.score_reid_ctf >= 0.3)).all()
    for pid in df.pid.unique():
        assert (tmp_path / "adapters" / str(pid) / "pytorch_lora_weights.safetensors").is_file()
    assert verify(tmp_path).ok
    skipped = json.loads((tmp_path / "skipped.json").read_text())
    assert [s["source_pid"] for s in skipped] == [fewest] and "min_images" in skipped[0]["reason"]
    assert str(fewest) in report.read_text()
    if df.kept.any():
        kept_back = load_dataset("market_layout", tmp_path, splits=("train",)).train
        assert len(kept_back) == int(df.kept.sum())

    # a re-run adds nothing and rewrites nothing
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "dropped").iterdir()}
    build_diff_person(make_cfg(root, [fewest] + others, counts[fewest] + 1), tmp_path, progress=False)
    after = pd.read_parquet(tmp_path / "manifest.parquet")
    assert len(after) == len(df) and not after.duplicated("file").any()
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "dropped").iterdir()}


def test_bad_filter_config_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="threshold"):
        BuildConfig.load("configs/toy.yaml", overrides=["filter.threshold=1.5"])
    with pytest.raises(ConfigError, match="filters"):
        BuildConfig.load("configs/toy.yaml", overrides=["filter.filters=[reid_ctf,bogus]"])
    with pytest.raises(ConfigError, match="base_model.path"):
        BuildConfig.load("configs/toy.yaml", overrides=["base_model.path="])
    # a build written before the one toy-fallback rule records tiny_base_model
    assert BuildConfig.load("configs/toy.yaml", overrides=["tiny_base_model=true", "base_model.path=x"]
                            ).base_model.path == "diffreid:tiny"
    assert BuildConfig.load("configs/toy.yaml", overrides=["tiny_base_model=false"]).base_model.path == "diffreid:tiny"


def test_unknown_source_pid_is_a_config_error(source, tmp_path):
    root, *_ = source
    with pytest.raises(ConfigError, match="not train identities"):
        build_diff_person(make_cfg(root, [9999], 1), tmp_path, progress=False)


@pytest.mark.slow
def test_shared_lora_ti_build_trains_once_and_samples_every_identity(source, tmp_path):
    root, fewest, others, counts = source
    cfg = make_cfg(root, others, 1, "adapter.mode=shared_lora_ti", "adapter.steps=2", "filter.threshold=0")
    with pytest.warns(UserWarning, match="corrupt"):
        build_diff_person(cfg, tmp_path, progress=False)
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    assert sorted(df.source_pid.unique()) == sorted(others) and (df.groupby("pid").size() == 4).all()
    assert set(df.adapter) == {"adapters/shared"}
    shared = tmp_path / "adapters" / "shared"
    assert (shared / "token_embeddings.safetensors").is_file() and (shared / "tokens.json").is_file()
    assert not [p for p in (tmp_path / "adapters").iterdir() if p.name != "shared"]
    assert all("<id-" in p for p in df.prompt) and verify(tmp_path).ok


def test_load_build_config_reads_a_ray_builds_config_and_names_a_folder_without_one(tmp_path):
    cfg = BuildConfig.load(Path(__file__).resolve().parents[1] / "configs" / "toy.yaml")
    data = cfg.model_dump(mode="json")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**data, "ray": {"generator_actors": 2}}))
    assert load_build_config(tmp_path) == cfg
    with pytest.raises(ConfigError, match="not a Diff-Person build folder"):
        load_build_config(tmp_path / "missing")
