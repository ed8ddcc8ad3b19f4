"""Diff-Person writer, manifest, verify, stats/plots and report on small synthetic images."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from diffreid.config import ConfigError
from diffreid.data.types import ImageRecord
from diffreid.diffperson import (
    DiffPersonWriter, PidMapper, WriterConfig, identity_distribution, identity_distribution_plot,
    read_manifest, stats, verify, write_report,
)

SOURCES = [("dsA", 1), ("dsA", 2), ("dsB", 1), ("dsB", 2)]  # overlapping source pids across datasets
N_IMAGES = 6


def person(seed: int, size=(32, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[: size[1] // 2] = rng.integers(0, 255, 3)  # a "shirt" colour per seed
    return Image.fromarray(arr)


def generated(key, n=N_IMAGES):
    base = hash(key) % 1000
    images = [person(base + i) for i in range(n)]
    records = [{"prompt": f"a photo of <iir> person {key[0]} {key[1]}", "seed": base + i, "adapter": f"{key}",
                "base_model": "tiny-sd", "scheduler": "DDIM", "steps": 10, "guidance": 4.0,
                "pid": 999, "negative_prompt": "blurry"} for i in range(n)]
    ctf = np.linspace(0.1, 0.9, n)
    scores = {"reid_ctf": ctf, "clip": 1.0 - ctf}
    return images, records, scores, ctf > 0.45


@pytest.fixture
def source_dir(tmp_path):
    paths = {}
    for ds, spid in SOURCES:
        d = tmp_path / "src" / ds
        d.mkdir(parents=True, exist_ok=True)
        paths[(ds, spid)] = []
        for k in range(2):
            p = d / f"{spid:04d}_c{k + 1}s1_{k:06d}_00.jpg"
            person(100 * spid + k).save(p)
            paths[(ds, spid)].append(str(p))
    return paths


def build(out, source_dir, config=None):
    with DiffPersonWriter(out, config) as w:
        w.register_identities(SOURCES)
        for key in SOURCES:
            w.add(key, *generated(key), source_images=source_dir[key], info={"caption": "red shirt"})
        w.skip(("dsB", 7), "only 1 usable image (< min 2)")
    return out


@pytest.fixture
def built(tmp_path, source_dir):
    return build(tmp_path / "dp", source_dir)


def test_layout_manifest_and_disjoint_pids(built):
    mapping = PidMapper(built / "pid_map.json")
    assert [pid for _, pid in mapping.items()] == [1, 2, 3, 4]
    assert mapping.get("dsA", 1) != mapping.get("dsB", 1)
    df = read_manifest(built)
    assert len(df) == len(SOURCES) * N_IMAGES
    for col in ("file", "pid", "camid", "source_dataset", "source_pid", "prompt", "seed", "adapter", "base_model",
                "scheduler", "steps", "guidance", "score_reid_ctf", "score_clip", "kept", "sha256"):
        assert col in df.columns, col
    assert (df["pid"] == df.apply(lambda r: mapping.get(r.source_dataset, r.source_pid), axis=1)).all()
    assert set(df["camid"]) == {8}  # generated camera c9, 0-based in the manifest
    assert df["negative_prompt"].eq("blurry").all()  # extra provenance kept; its "pid" did not override ours
    kept = df[df["kept"]]
    assert kept["file"].str.startswith("bounding_box_train/").all()
    assert df[~df["kept"]]["file"].str.startswith("dropped/").all()
    merged = pd.read_parquet(built / "manifest.parquet")
    assert sorted(merged["file"]) == sorted(df["file"])
    idents = json.loads((built / "identities.json").read_text())
    assert [i["pid"] for i in idents] == [1, 2, 3, 4] and idents[0]["info"] == {"caption": "red shirt"}


def test_read_back_as_market_layout(built):
    from diffreid.data import load_dataset

    ds = load_dataset("market_layout", built, splits=("train",))
    df = read_manifest(built)
    assert len(ds.train) == int(df["kept"].sum())
    assert {r.pid for r in ds.train} == set(df.loc[df["kept"], "pid"])
    assert {r.camid for r in ds.train} == {8}
    by_name = {r.path.rsplit("/", 1)[-1]: r.pid for r in ds.train}
    for row in df[df["kept"]].itertuples():
        assert by_name[row.file.rsplit("/", 1)[-1]] == row.pid


def test_pid_mapper_is_stable_and_extends(tmp_path):
    m = PidMapper(tmp_path / "pid_map.json")
    assert m.extend([("b", 3), ("a", 5), ("a", 1)]) == [3, 2, 1]  # new keys numbered in sorted order
    again = PidMapper(tmp_path / "pid_map.json")
    assert again.pid("c", 1) == 4 and again.get("a", 5) == 2 and again.get("b", 3) == 3
    assert PidMapper(tmp_path / "pid_map.json").get("c", 1) == 4
    with pytest.raises(ValueError, match="source_pid"):
        m.pid("a", "x")


def test_verify_passes_then_reports_each_problem(built):
    report = verify(built)
    assert report.ok, report.format()
    assert report.counts["rows"] == 24 and report.counts["files_on_disk"] == 24
    assert report.counts["identities"] == 4 and report.counts["mapped_identities"] == 4

    df = read_manifest(built)
    kept_files = list(df.loc[df["kept"], "file"])
    (built / kept_files[0]).unlink()
    (built / "bounding_box_train" / "0001_c9s1_000077_00.jpg").write_bytes(b"x")
    (built / kept_files[1]).write_bytes(b"not the same bytes")
    pid_map = json.loads((built / "pid_map.json").read_text())
    pid_map["entries"][0]["source_pid"] = 42
    (built / "pid_map.json").write_text(json.dumps(pid_map))

    report = verify(built)
    assert not report.ok
    assert report.problems["missing_files"] == [kept_files[0]]
    assert report.problems["orphan_files"] == ["bounding_box_train/0001_c9s1_000077_00.jpg"]
    assert report.problems["checksum_mismatches"] == [kept_files[1]]
    assert len(report.problems["pid_map_problems"]) == 1
    assert "missing_files: 1" in report.format()
    assert "checksum_mismatches" not in verify(built, checksums=False).problems


def test_verify_flags_duplicates_and_stale_manifest(built, source_dir):
    part = sorted((built / "manifest").glob("part-*.parquet"))[0]
    rows = pd.read_parquet(part)
    pd.concat([rows, rows.head(1)]).to_parquet(part, index=False)
    report = verify(built)
    assert len(report.problems["duplicate_rows"]) == 1
    assert any("stale" in p for p in report.problems["manifest_problems"])


def test_readd_is_noop_and_rerun_never_duplicates(built, source_dir):
    before = {p.name: p.stat().st_mtime_ns for p in (built / "bounding_box_train").iterdir()}
    with DiffPersonWriter(built) as w:
        assert w.has_identity(("dsA", 2)) and not w.has_identity(("dsA", 3))
        assert w.add(("dsA", 2), *generated(("dsA", 2))) == 0
        assert w.add(("dsA", 3), *generated(("dsA", 3), n=3)) == 3  # a new identity extends the map
    build(built, source_dir)  # the whole build again
    df = read_manifest(built)
    assert len(df) == 24 + 3 and df["file"].is_unique
    assert PidMapper(built / "pid_map.json").get("dsA", 3) == 5
    after = {p.name: p.stat().st_mtime_ns for p in (built / "bounding_box_train").iterdir()}
    assert all(after[name] == t for name, t in before.items())  # nothing rewritten
    assert verify(built).ok


def test_crash_mid_identity_leaves_no_rows_and_rerun_completes(tmp_path, source_dir):
    out = tmp_path / "dp"
    key = ("dsA", 1)
    images, records, scores, kept = generated(key)
    kept = np.ones(N_IMAGES, bool)
    broken = images[:3] + ["not an image"] + images[4:]
    w = DiffPersonWriter(out)
    with pytest.raises(TypeError, match="PIL image"):
        w.add(key, broken, records, scores, kept)
    assert not w.has_identity(key)
    assert read_manifest(out).empty
    assert len(list((out / "bounding_box_train").iterdir())) == 3  # files of the crashed attempt ...
    report = verify(out)  # ... are orphans until the identity is redone
    assert len(report.problems["orphan_files"]) == 3
    assert any("interrupted" in p for p in report.problems["manifest_problems"])
    # the re-run makes fewer images: the crashed attempt's extra files must not survive
    assert w.add(key, images[:2], records[:2], {k: v[:2] for k, v in scores.items()}, kept[:2]) == 2
    w.close()
    assert sorted(p.name for p in (out / "bounding_box_train").iterdir()) == [
        "0001_c9s1_000000_00.jpg", "0001_c9s1_000001_00.jpg"]
    assert verify(out).ok


def test_empty_dataset_is_consistent_and_reports(tmp_path):
    out = tmp_path / "dp"
    DiffPersonWriter(out).close()
    assert verify(out).ok
    assert stats(out)["images"] == 0
    assert "none" in write_report(out).read_text()


def test_bad_input_errors(tmp_path):
    w = DiffPersonWriter(tmp_path / "dp")
    images, records, scores, kept = generated(("dsA", 1))
    with pytest.raises(ValueError, match="lacks seed"):
        w.add(("dsA", 1), images, [{k: v for k, v in r.items() if k != "seed"} for r in records], scores, kept)
    with pytest.raises(ValueError, match="filter name"):
        w.add(("dsA", 1), images, records, {"Re-ID": scores["clip"]}, kept)
    with pytest.raises(ValueError, match="3 scores for 6 images"):
        w.add(("dsA", 1), images, records, {"clip": scores["clip"][:3]}, kept)
    with pytest.raises(ConfigError, match="image_format"):
        DiffPersonWriter(tmp_path / "dp", WriterConfig(image_format="png"))


def test_png_no_dropped_and_copied_sources(tmp_path, source_dir):
    out = tmp_path / "dp"
    cfg = WriterConfig(image_format="png", keep_dropped=False, generated_cam=7)
    with DiffPersonWriter(out, cfg) as w:
        key = ("dsA", 1)
        recs = [ImageRecord(p, 1, k) for k, p in enumerate(source_dir[key])]
        assert w.add_source_images(key, recs) == 2
        w.add(key, *generated(key))
        with pytest.raises(ConfigError, match="generated_cam"):
            w.add_source_images(("dsB", 1), [ImageRecord(source_dir[("dsB", 1)][0], 1, 6)])
    names = sorted(p.name for p in (out / "bounding_box_train").iterdir())
    assert names[:2] == ["0001_c1s0_000000_00.png", "0001_c2s0_000001_00.png"]  # sources keep their cameras
    assert all(n.startswith("0001_c7s1_") for n in names[2:])
    assert not (out / "dropped").exists()
    s = stats(out)
    assert s["source_copied"] == 2 and s["images"] == 2 + s["generated_kept"]
    assert verify(out).ok


def test_identity_distribution_numbers_and_plot(tmp_path):
    xs, ys = identity_distribution([1, 2, 2, 5])
    assert list(xs) == [0, 1, 2, 3, 4, 5, 6]
    assert list(ys) == [0, 0, 25, 75, 75, 75, 100]
    path = identity_distribution_plot({"a": [1, 2, 2, 5], "b": [3, 3]}, tmp_path / "curve.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 300


def test_stats_numbers(built):
    s = stats(built)
    # linspace(0.1, 0.9, 6) > 0.45 keeps 3 of 6 per identity
    assert s["images"] == 12 and s["dropped"] == 12 and s["identities"] == 4
    assert s["keep_rate"] == pytest.approx(0.5)
    assert s["counts"] == {1: 3, 2: 3, 3: 3, 4: 3}
    assert s["by_source"]["dsA"] == {"identities": 2, "images": 6, "dropped": 6}
    assert s["filters"]["reid_ctf"]["kept_mean"] > s["filters"]["reid_ctf"]["dropped_mean"]


def test_report_html(built):
    extra = {"Results <fine-tune>": pd.DataFrame({"init": ["<script>x</script>", "random"], "mAP": [0.5, 0.1]})}
    path = write_report(built, extra_tables=extra, skipped_identities=[
        {"source_dataset": "dsA", "source_pid": 9, "reason": "corrupt & unreadable"}])
    text = path.read_text()
    assert "Results &lt;fine-tune&gt;" in text and "&lt;script&gt;x&lt;/script&gt;" in text
    assert "<script>" not in text
    assert "only 1 usable image (&lt; min 2)" in text and "corrupt &amp; unreadable" in text
    assert "consistent" in text
    for png in ("scores_reid_ctf.png", "scores_clip.png", "grid_0001.png"):
        assert (built / "report" / png).is_file() and f'src="report/{png}"' in text
    # 3 kept of 6 generated for every identity: a one-step curve tells nothing, so it is left out
    assert not (built / "report" / "identity_distribution.png").exists() and "Identity distribution" not in text


def test_cli_verify_and_stats(built, capsys):
    from diffreid.cli import main

    assert main(["data", "verify", str(built)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["data", "stats", str(built), "--out", str(built / "plots"), "--grids", "2"]) == 0
    out = capsys.readouterr().out
    assert "identities" in out and "dsB" in out
    assert "every identity has the same count" in out
    assert len(list((built / "plots").glob("grid_*.png"))) == 2
    assert main(["data", "summary", "market_layout", str(built), "--splits", "train"]) == 0
    assert "12" in capsys.readouterr().out
    next((built / "bounding_box_train").iterdir()).unlink()
    assert main(["data", "verify", str(built)]) == 1
    assert "missing_files: 1" in capsys.readouterr().out
    assert main(["data", "verify", str(built / "nope")]) == 2
