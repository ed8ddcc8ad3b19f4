"""Identity fidelity of a Diff-Person folder: a synthetic one whose "generated" images are held-out real images
(kept) and noise (dropped) must score near truth and near chance; a real tiny build measures itself; the CLI
prints the table and writes the JSON."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from diffreid.data import load_dataset
from diffreid.data.toyworld import ToyWorldConfig, render_world
from diffreid.data.types import DatasetError
from diffreid.diffperson import DiffPersonWriter, write_report
from diffreid.diffperson.fidelity import (
    ATTRIBUTES, FIDELITY, FidelityUnavailable, format_fidelity, load_fidelity_config, measure_fidelity,
)

IDS = 4
READER = ["reader.epochs=3", "reader.milestones=[2]"]  # 30 iterations: enough to tell 4 toy identities apart
SHARES = ["id_accuracy", "rank1", "mAP", "views_2plus", "view_entropy",
          *(f"attr_{k}" for k in (*ATTRIBUTES, "all_four"))]


def provenance(i: int) -> dict:
    return {"prompt": "a photo of a person", "seed": i, "adapter": "", "base_model": "", "scheduler": "",
            "steps": 0, "guidance": 0.0}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """Per identity: half its real images are the "source" images, the other half are written as kept generated
    images; 4 noise images per identity are written as dropped ones."""
    base = tmp_path_factory.mktemp("fidelity")
    world = render_world(ToyWorldConfig(ids_train=IDS, ids_test=1, cams=3, height=64, width=32, seed=3),
                         base / "world")
    by_pid: dict[int, list] = {}
    for r in sorted(load_dataset("market_layout", world).train, key=lambda r: r.path):
        by_pid.setdefault(r.pid, []).append(r)
    rng = np.random.default_rng(0)
    root = base / "dp"
    with DiffPersonWriter(root) as writer:
        writer.register_identities([("toy", pid) for pid in by_pid])
        for pid, records in by_pid.items():
            source, held_out = records[0::2], records[1::2]
            noise = [Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)) for _ in range(4)]
            images = [Image.open(r.path).convert("RGB") for r in held_out] + noise
            kept = [True] * len(held_out) + [False] * len(noise)
            writer.add(("toy", pid), images, [provenance(i) for i in range(len(images))],
                       {"reid_ctf": [float(k) for k in kept]}, kept, source_images=[r.path for r in source])
    result = measure_fidelity(root, load_fidelity_config(root, READER))
    return root, result


def test_fields_ranges_and_counts(synthetic):
    root, result = synthetic
    assert json.loads((root / FIDELITY).read_text()) == result
    assert result["identities"] == IDS and result["chance"] == pytest.approx(1 / IDS)
    assert result["ground_truth"] and result["reader"]["trained_here"]
    groups = result["groups"]
    assert set(groups) == {"all", "kept", "dropped", "real"}
    assert groups["all"]["images"] == groups["kept"]["images"] + groups["dropped"]["images"]
    assert groups["dropped"]["images"] == 4 * IDS
    for name in ("all", "kept", "dropped"):
        for key in SHARES:
            assert 0 <= groups[name][key] <= 1, (name, key)
        assert groups[name]["diversity"] >= 0 and groups[name]["diversity_ratio"] > 0
    assert groups["real"]["id_accuracy"] is None and groups["real"]["attr_all_four"] is not None


def test_real_images_score_high_and_noise_scores_chance(synthetic):
    _, result = synthetic
    kept, dropped, real = (result["groups"][g] for g in ("kept", "dropped", "real"))
    # held-out real images of the claimed person: the reader and the attribute predictor recognise them
    assert kept["id_accuracy"] >= 0.75 and kept["rank1"] >= 0.75
    assert kept["attr_upper_colour"] >= 0.8 and kept["attr_all_four"] >= 0.5
    assert kept["views_2plus"] == 1.0
    # noise claims an identity it does not show: chance level, and no outfit is right
    assert dropped["id_accuracy"] <= 0.5 and dropped["mAP"] < kept["mAP"]
    assert dropped["attr_all_four"] <= 0.2 and dropped["attr_upper_colour"] < kept["attr_upper_colour"]
    assert abs(kept["attr_all_four"] - real["attr_all_four"]) <= 0.3  # same kind of images, same predictor


def test_reader_is_cached_and_a_given_reader_is_used(synthetic, tmp_path):
    root, first = synthetic
    weights = root / "fidelity" / "reader" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = measure_fidelity(root, load_fidelity_config(root, READER))
    assert weights.stat().st_mtime_ns == stamp and again["groups"] == first["groups"]
    given = shutil.copytree(root / "fidelity" / "reader", tmp_path / "reader")
    other = measure_fidelity(root, load_fidelity_config(root, reader_model_dir=str(given)))
    assert other["reader"] == {"model_dir": str(given), "trained_here": False}
    assert other["groups"]["kept"]["id_accuracy"] == pytest.approx(first["groups"]["kept"]["id_accuracy"])


def test_report_opens_with_the_fidelity_table(synthetic):
    root, _ = synthetic
    text = write_report(root).read_text()
    assert text.index("Identity fidelity") < text.index("Diff-Person summary")
    assert "identity accuracy" in text and "attribute: all four" in text


def test_cli_prints_the_table_and_writes_the_file(synthetic, capsys):
    from diffreid.cli import main

    root, first = synthetic
    (root / FIDELITY).unlink()
    assert main(["data", "fidelity", str(root), *(x for o in READER for x in ("--set", o))]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.strip().startswith("metric")).split()
    assert header == ["metric", "all", "kept", "dropped", "real"]
    row = next(line for line in out.splitlines() if "identity accuracy" in line)
    assert f"{100 * first['groups']['kept']['id_accuracy']:.1f}%" in row
    assert "attribute: all four" in out and str(root / FIDELITY) in out
    assert json.loads((root / FIDELITY).read_text())["groups"] == first["groups"]


def test_errors_name_the_problem(tmp_path, capsys):
    from diffreid.cli import main

    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError, match="diffperson.json"):
        measure_fidelity(tmp_path / "plain")
    with DiffPersonWriter(tmp_path / "empty"):
        pass
    with pytest.raises(FidelityUnavailable, match="no generated images"):
        measure_fidelity(tmp_path / "empty")
    assert main(["data", "fidelity", str(tmp_path / "empty")]) == 2
    assert "no generated images" in capsys.readouterr().err
    assert main(["data", "fidelity", str(tmp_path / "empty"), "--set", "reader.epochs=0"]) == 2
    assert "reader.epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_build_measures_itself(tmp_path):
    from diffreid.build import BuildConfig, build_diff_person

    world = render_world(ToyWorldConfig(ids_train=3, ids_test=1, cams=2, images_per_cam=(3, 4), cam_presence=1.0,
                                        height=64, width=32, seed=0), tmp_path / "world")
    cfg = BuildConfig.load("configs/toy.yaml", overrides=[
        "adapter.steps=2", "adapter.checkpoint_every=2", "refset.num_images=2", "refset.steps=2",
        "sampler.num_images=4", "sampler.steps=2", "filter_reid.epochs=1", "filter_reid.P=3", "filter_reid.K=2",
        "filter.threshold=0.5", "fidelity.reader.epochs=1", "fidelity.reader.iters_per_epoch=2"],
        sources=[{"name": "toy", "root": str(world)}])
    report = build_diff_person(cfg, tmp_path / "build", progress=False)
    result = json.loads((tmp_path / "build" / FIDELITY).read_text())
    groups = result["groups"]
    assert result["identities"] == 3 and result["ground_truth"]
    assert result["reader"]["seed"] == cfg.runtime.seed + cfg.fidelity.seed_offset
    assert groups["all"]["images"] == 3 * 4 == groups["kept"]["images"] + groups["dropped"]["images"]
    for key in ("id_accuracy", "rank1", "mAP", "attr_all_four"):
        assert 0 <= groups["all"][key] <= 1
    assert "fidelity_s" in json.loads((tmp_path / "build" / "timings.json").read_text())
    assert "Identity fidelity" in report.read_text()
    assert "identity accuracy" in format_fidelity(result)
