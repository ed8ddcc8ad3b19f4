"""The RegDB and LLCM writers of an expanded VI dataset, on small fake trees of real image files: the readers
(``load_dataset("regdb" | "llcm", out)``) read the VI dataset's own identities unchanged plus the new ones, a crashed
identity is rewritten without duplicate index lines, and the factory picks the writer by dataset name."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from diffreid.data import load_dataset
from diffreid.data.types import DatasetError
from diffreid.vi.layout import (Generated, LLCMExpansionWriter, RegDBExpansionWriter, SysuExpansionWriter,
                                expansion_writer)
from test_data_readers import llcm_lines, make_regdb, make_sysu, write_text  # the reader tests' fake trees

RECORD = {"prompt": "a infrared photo of <id> person", "seed": 1, "adapter": "vi_modality", "scheduler": "ddim",
          "steps": 2, "guidance": 2.0}
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


def put(path: Path) -> Path:
    """A small real image file, in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (40, 120, 200)).save(path, FORMATS[path.suffix.lower()])
    return path


def make_llcm(base: Path, test_form: str) -> Path:
    """LLCM train index files (pids 1, 2) and a test split (pid 3) as index files or as test folders."""
    write_text(base / "idx" / "train_vis.txt", llcm_lines(base, put, "vis", (1, 2), (1, 2)))
    write_text(base / "idx" / "train_nir.txt", llcm_lines(base, put, "nir", (1, 2), (1, 6)))
    if test_form == "index":
        write_text(base / "idx" / "test_vis.txt", llcm_lines(base, put, "vis", (3,), (4,)))
        write_text(base / "idx" / "test_nir.txt", llcm_lines(base, put, "nir", (3,), (5, 6)))
    else:
        write_text(base / "idx" / "test_id.txt", "3")
        for rel in ("test_vis/cam4/0003/0003_c04_s200000_f0001_vis.jpg",
                    "test_nir/cam5/0003/0003_c05_s200000_f0002_nir.jpg"):
            put(base / rel)
    return base


def source_images(folder: Path) -> list[Path]:
    """Two RGB images of a source identity: a JPEG (copied as is) and a PNG (re-encoded)."""
    return [put(folder / "0005_c1s1_000001_00.jpg"), put(folder / "0005_c2s1_000002_00.png")]


def ir(kept: bool, cam: int, score: float = 0.9) -> Generated:
    return Generated(Image.new("RGB", (8, 16), (90, 90, 90)), cam, "ir", RECORD, {"reid_ctf": score}, kept)


def write_two(writer, src: list[Path], rgb_cam: int, ir_cams: tuple[int, int]):
    """Two expanded identities (some IR kept, some dropped; one generated RGB) and one not expanded."""
    a, b, c = writer.assign_pids([("market", 5), ("market", 9), ("market", 11)])
    assert writer.link_vi_dataset() > 0
    rgb = Generated(Image.new("RGB", (8, 16), (200, 10, 10)), rgb_cam, "rgb", RECORD, {"reid_ctf": 0.8}, True)
    sources = [(str(p), rgb_cam, i) for i, p in enumerate(src)]
    assert writer.write_identity(a, sources, [ir(True, ir_cams[0]), ir(False, ir_cams[1], 0.1),
                                              ir(True, ir_cams[1]), rgb], expanded=True) == 6
    assert writer.write_identity(b, sources[:1], [ir(False, ir_cams[0], 0.2), ir(True, ir_cams[0])],
                                 expanded=True, info={"kept_ir": 1}) == 3
    assert writer.write_identity(c, sources[:1], [ir(False, ir_cams[0], 0.1)], expanded=False) == 2
    assert writer.expanded_pids() == [a, b]
    return a, b, c


def relative(ds, split: str) -> list[tuple]:
    return sorted((os.path.relpath(r.path, ds.root), r.pid, r.camid, r.modality) for r in ds.split(split))


def check_originals_kept(src, out) -> None:
    """Every image of the VI dataset is in the output under the same path, id, camera and modality, and is the
    same file; the test split is unchanged."""
    new_pids = {r.pid for r in out.train} - {r.pid for r in src.train}
    assert sorted(t for t in relative(out, "train") if t[1] not in new_pids) == relative(src, "train")
    for split in ("query", "gallery"):
        assert relative(out, split) == relative(src, split)
    by_rel = {os.path.relpath(r.path, out.root): r.path for r in out.train + out.query + out.gallery}
    for r in src.train + src.query + src.gallery:
        copy = by_rel[os.path.relpath(r.path, src.root)]
        assert Path(copy).read_bytes() == Path(r.path).read_bytes()


def check_manifest_matches_reader(out_dir: Path, ds, new_pids: list[int]) -> None:
    """Kept manifest rows are exactly the reader's records of the new pids (path, camid, modality); dropped
    images are written under dropped/ and listed nowhere."""
    df = pd.read_parquet(out_dir / "manifest.parquet")
    kept = df[df["kept"]]
    read = {os.path.relpath(r.path, ds.root): (r.pid, r.camid, r.modality) for r in ds.train if r.pid in new_pids}
    assert {row.file: (row.pid, row.camid, row.modality) for row in kept.itertuples()} == read
    dropped = df[~df["kept"] & (df["file"] != "")]
    assert len(dropped) and dropped["file"].str.startswith("dropped/").all()
    assert all((out_dir / f).is_file() for f in dropped["file"])
    assert not any("dropped/" in p.read_text() for p in (out_dir / "idx").iterdir())
    for r in ds.train:
        if r.pid in new_pids:
            assert Image.open(r.path).size == (8, 16)


# ----------------------------------------------------------------------------------------------------------
# RegDB
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("link_mode", ["symlink", "copy"])
def test_regdb_writer_round_trip(tmp_path, link_mode):
    base = make_regdb(tmp_path / "RegDB", put)
    src = source_images(tmp_path / "market")
    writer = expansion_writer("regdb", tmp_path / "out", tmp_path, link_mode=link_mode)  # finds RegDB/ like the reader
    assert isinstance(writer, RegDBExpansionWriter) and writer.vi_base == base.resolve()
    a, b, c = write_two(writer, src, rgb_cam=1, ir_cams=(2, 2))
    assert a == 14  # above every folder (1..3, 11..13) and every label (0, 1) of the VI dataset
    lists = writer.close()
    assert lists["train_visible_1"] == [0, 1, a, b] and lists["test_thermal_2"] == [0]

    out = tmp_path / "out"
    for trial in (1, 2):
        ds = load_dataset("regdb", out, trial=trial)
        check_originals_kept(load_dataset("regdb", base, trial=trial), ds)
        assert {r.pid for r in ds.train} == {0, 1, a, b}  # c was not expanded
        mine = sorted((os.path.relpath(r.path, ds.root), r.camid, r.modality) for r in ds.train if r.pid == a)
        assert mine == [(f"Thermal/{a}/generated_t_{a:05d}_1.jpg", 1, "ir"),
                        (f"Thermal/{a}/generated_t_{a:05d}_2.jpg", 1, "ir"),
                        (f"Visible/{a}/generated_v_{a:05d}_1.jpg", 0, "rgb"),
                        (f"Visible/{a}/source_v_{a:05d}_1.jpg", 0, "rgb"),
                        (f"Visible/{a}/source_v_{a:05d}_2.jpg", 0, "rgb")]
        assert sorted((r.camid, r.modality) for r in ds.train if r.pid == b) == [(0, "rgb"), (1, "ir")]
        check_manifest_matches_reader(out, ds, [a, b])
    # the JPEG source is copied byte for byte, the PNG one re-encoded as JPEG
    assert (out / f"Visible/{a}/source_v_{a:05d}_1.jpg").read_bytes() == src[0].read_bytes()
    assert Image.open(out / f"Visible/{a}/source_v_{a:05d}_2.jpg").format == "JPEG"
    assert (out / "dropped" / "Thermal" / str(c) / f"generated_t_{c:05d}_1.jpg").is_file()
    assert not (out / "Visible" / str(c)).exists()
    assert (out / "Visible" / "1").is_symlink() == (link_mode == "symlink")


def test_regdb_crashed_identity_is_rewritten_without_duplicates(tmp_path):
    base = make_regdb(tmp_path / "RegDB", put)
    src = source_images(tmp_path / "market")
    out = tmp_path / "out"
    writer = RegDBExpansionWriter(out, base)
    a, b = writer.assign_pids([("market", 5), ("market", 9)])
    writer.link_vi_dataset()
    assert writer.write_identity(a, [(str(src[0]), 1, 0)], [ir(True, 2)], expanded=True) == 2
    writer.close()
    # b dies mid-write: its source image is copied, then a generated "image" that is no image fails
    with pytest.raises(TypeError, match="expected a PIL image"):
        writer.write_identity(b, [(str(p), 1, 0) for p in src], [ir(True, 2), Generated("x", 2, "ir", RECORD)],
                              expanded=True)
    assert (out / "manifest" / f"pending-{b:06d}-s1").exists() and (out / "Visible" / str(b)).is_dir()
    stale = put(out / "Thermal" / str(b) / f"generated_t_{b:05d}_9.jpg")

    again = RegDBExpansionWriter(out, base)  # the re-run
    assert again.assign_pids([("market", 5), ("market", 9)]) == [a, b]
    assert again.link_vi_dataset() == 0 and not again.has_identity(b)
    assert again.write_identity(a, [(str(src[0]), 1, 0)], [ir(True, 2)], expanded=True) == 0  # committed
    assert again.write_identity(b, [(str(src[0]), 1, 0)], [ir(True, 2)], expanded=True) == 2
    assert not stale.exists() and not (out / "manifest" / f"pending-{b:06d}-s1").exists()
    assert sorted(p.name for p in (out / "Visible" / str(b)).iterdir()) == [f"source_v_{b:05d}_1.jpg"]
    again.close()
    first = {p.name: p.read_bytes() for p in (out / "idx").iterdir()}
    again.close()  # closing twice appends nothing twice
    assert {p.name: p.read_bytes() for p in (out / "idx").iterdir()} == first
    lines = (out / "idx" / "train_thermal_1.txt").read_text().splitlines()
    assert len(lines) == len(set(lines)) == 4 + 2
    assert lines[:4] == (base / "idx" / "train_thermal_1.txt").read_text().splitlines()
    ds = load_dataset("regdb", out, trial=1)
    assert sorted(r.pid for r in ds.train if r.pid >= a) == [a, a, b, b]
    df = pd.read_parquet(out / "manifest.parquet")
    assert sorted(df["pid"]) == [a, a, b, b]


def test_regdb_bad_input(tmp_path):
    base = make_regdb(tmp_path / "RegDB", put)
    with pytest.raises(DatasetError, match=r"pid collision: new_pid_start=12 .* up to 13"):
        RegDBExpansionWriter(tmp_path / "out", base, new_pid_start=12)
    writer = RegDBExpansionWriter(tmp_path / "out", base)
    (pid,) = writer.assign_pids([("market", 5)])
    bad = Generated(Image.new("RGB", (8, 16)), 2, "depth", RECORD)
    with pytest.raises(DatasetError, match="modality 'depth': expected one of 'rgb', 'ir'"):
        writer.write_identity(pid, [], [bad], expanded=True)
    (base / "idx" / "test_thermal_2.txt").unlink()
    with pytest.raises(DatasetError, match="test_thermal_2.txt"):
        RegDBExpansionWriter(tmp_path / "out2", base)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="RegDB index folder not found"):
        RegDBExpansionWriter(tmp_path / "out3", tmp_path / "empty")


# ----------------------------------------------------------------------------------------------------------
# LLCM
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("test_form", ["folders", "index"])
def test_llcm_writer_round_trip(tmp_path, test_form):
    base = make_llcm(tmp_path / "LLCM", test_form)
    src = source_images(tmp_path / "market")
    writer = expansion_writer("llcm", tmp_path / "out", base)
    assert isinstance(writer, LLCMExpansionWriter)
    a, b, c = write_two(writer, src, rgb_cam=2, ir_cams=(1, 6))
    assert a == 4  # above the pid folders 0001..0003 and every label
    lists = writer.close()
    assert lists["train_vis"] == lists["train_nir"] == [0, 1, a, b]

    out = tmp_path / "out"
    ds = load_dataset("llcm", out)
    check_originals_kept(load_dataset("llcm", base), ds)
    assert {r.pid for r in ds.train} == {0, 1, a, b}
    mine = sorted((os.path.relpath(r.path, ds.root), r.camid, r.modality, r.seq, r.frame)
                  for r in ds.train if r.pid == a)
    assert mine == [(f"nir/{a:04d}/{a:04d}_c01_s000002_f0001_nir.jpg", 0, "ir", 2, 1),
                    (f"nir/{a:04d}/{a:04d}_c06_s000002_f0001_nir.jpg", 5, "ir", 2, 1),
                    (f"vis/{a:04d}/{a:04d}_c02_s000001_f0001_vis.jpg", 1, "rgb", 1, 1),
                    (f"vis/{a:04d}/{a:04d}_c02_s000001_f0002_vis.jpg", 1, "rgb", 1, 2),
                    (f"vis/{a:04d}/{a:04d}_c02_s000002_f0001_vis.jpg", 1, "rgb", 2, 1)]
    assert sorted((r.camid, r.modality) for r in ds.train if r.pid == b) == [(0, "ir"), (1, "rgb")]
    check_manifest_matches_reader(out, ds, [a, b])
    assert (out / "dropped" / "nir" / f"{a:04d}" / f"{a:04d}_c06_s000002_f0001_nir.jpg").is_file()
    assert not (out / "vis" / f"{c:04d}").exists()
    if test_form == "folders":
        assert (out / "test_vis").is_symlink() and (out / "idx" / "test_id.txt").read_text() == "3"
    train_vis = (out / "idx" / "train_vis.txt").read_text()
    assert train_vis.startswith((base / "idx" / "train_vis.txt").read_text())
    assert train_vis.count(f" {a}\n") == 3 and train_vis.count(f" {b}\n") == 1


def test_llcm_crashed_identity_is_rewritten_without_duplicates(tmp_path):
    base = make_llcm(tmp_path / "LLCM", "index")
    src = source_images(tmp_path / "market")
    out = tmp_path / "out"
    writer = LLCMExpansionWriter(out, base)
    (a,) = writer.assign_pids([("market", 5)])
    writer.link_vi_dataset()
    # a crash left a pending mark and a half-written image behind
    stale = put(out / "nir" / f"{a:04d}" / f"{a:04d}_c06_s000002_f0009_nir.jpg")
    write_text(out / "manifest" / f"pending-{a:06d}-s1", "")
    assert writer.write_identity(a, [(str(src[0]), 2, 0)], [ir(True, 6)], expanded=True) == 2
    assert not stale.exists()
    writer.close()
    rerun = LLCMExpansionWriter(out, base)
    assert rerun.assign_pids([("market", 5)]) == [a] and rerun.link_vi_dataset() == 0
    assert rerun.write_identity(a, [(str(src[0]), 2, 0)], [ir(True, 6)], expanded=True) == 0
    rerun.close()
    for name, n_vi in (("train_vis.txt", 4), ("train_nir.txt", 4)):
        lines = (out / "idx" / name).read_text().splitlines()
        assert len(lines) == len(set(lines)) == n_vi + 1, name
    ds = load_dataset("llcm", out)
    assert [r.modality for r in ds.train if r.pid == a] == ["rgb", "ir"]
    bad = Generated(Image.new("RGB", (8, 16)), 0, "ir", RECORD)
    (b,) = rerun.assign_pids([("market", 9)])
    with pytest.raises(DatasetError, match="camera 0: expected an LLCM camera 1..99"):
        rerun.write_identity(b, [], [bad], expanded=True)


# ----------------------------------------------------------------------------------------------------------
# the factory
# ----------------------------------------------------------------------------------------------------------
def test_factory_picks_the_writer_and_names_unknown_datasets(tmp_path):
    sysu = make_sysu(tmp_path / "sysu", put)
    assert type(expansion_writer("SYSU-MM01", tmp_path / "o1", sysu, new_pid_start=10)) is SysuExpansionWriter
    assert type(expansion_writer("sysu", tmp_path / "o2", sysu)) is SysuExpansionWriter
    regdb = make_regdb(tmp_path / "RegDB", put)
    assert type(expansion_writer("regdb", tmp_path / "o3", regdb, keep_dropped=False)) is RegDBExpansionWriter
    with pytest.raises(DatasetError, match=re.escape("no expansion writer for VI dataset 'market1501': expected one "
                                                     "of 'llcm', 'regdb', 'sysu_mm01'")):
        expansion_writer("market1501", tmp_path / "o4", regdb)
    with pytest.raises(DatasetError, match="RegDB index folder not found"):
        expansion_writer("regdb", tmp_path / "o5", sysu)
