"""Re-ID dataset readers on small fake trees of real (tiny) image files, one tree per layout."""
from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from diffreid.data import (DatasetError, DatasetWarning, ImageRecord, available_datasets, load_dataset,
                           parse_market_name, relabel)


@pytest.fixture(scope="module")
def image_bytes() -> dict[str, bytes]:
    out = {}
    for ext, fmt in ((".jpg", "JPEG"), (".png", "PNG"), (".bmp", "BMP")):
        buf = io.BytesIO()
        Image.new("RGB", (4, 8), (180, 40, 40)).save(buf, fmt)
        out[ext] = buf.getvalue()
    return out


@pytest.fixture
def put(image_bytes):
    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(image_bytes[path.suffix.lower()])
        return path

    return write


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def names(records: list[ImageRecord]) -> list[str]:
    return [os.path.basename(r.path) for r in records]


# ---------------------------------------------------------------- Market names and layout

def test_parse_market_name_forms():
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 0, 1, 451)
    assert parse_market_name("/x/y/1501_c6s4_001877_02.png") == (1501, 5, 4, 1877)
    assert parse_market_name("0001_c2_7.png") == (1, 1, None, 7)  # CUHK03-NP / short form
    assert parse_market_name("0000_c14_0030.jpg") == (0, 13, None, 30)  # MSMT17 in Market form
    assert parse_market_name("-1_c3s2_000100_00.jpg") == (-1, 2, 2, 100)
    assert parse_market_name("0007_c2s1.jpg") == (7, 1, 1, None)
    for bad in ("Thumbs.jpg", "0001_x1.jpg", "0001_c0s1_000001_00.jpg", "0001_c1x.jpg", "-2_c1s1_000001_00.jpg"):
        with pytest.raises(DatasetError, match="0002_c1s1_000451_03.jpg") as err:
            parse_market_name(bad)
        assert bad in str(err.value)


def make_market(root: Path, put) -> Path:
    train = root / "bounding_box_train"
    for n in ("0001_c1s1_000100_00.jpg", "0001_c1s1_000050_00.jpg", "0001_c2s1_000010_00.jpg",
              "0001_c1s2_000001_00.jpg", "0002_c3s1_000200_01.jpg", "0002_c4s1_000300_01.jpg",
              "0003_c6s3_000400_02.jpg", "0000_c1s1_000001_00.jpg", "-1_c1s1_000001_00.jpg",
              "bad.jpg", "0004_x1.jpg", "0005_c0s1_000001_00.jpg", "7_c1x.jpg", "extra/0009_c1s1_000001_00.jpg"):
        put(train / n)
    write_text(train / "Thumbs.db", "x")
    write_text(train / "readme.txt", "not an image")
    for n in ("0010_c1s1_000010_00.jpg", "0011_c2s1_000020_00.jpg"):
        put(root / "query" / n)
    for n in ("0010_c2s1_000030_00.jpg", "0010_c3s1_000040_00.jpg", "0011_c1s1_000050_00.jpg",
              "0000_c1s1_000001_00.jpg", "-1_c2s1_000002_00.jpg", "0011_c4_7.png"):
        put(root / "bounding_box_test" / n)
    return root


def test_market_layout_counts_junk_distractors_and_warning(tmp_path, put):
    root = make_market(tmp_path / "world", put)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset("market_layout", root)
    skipped = [w for w in caught if issubclass(w.category, DatasetWarning)]
    assert len(skipped) == 1
    msg = str(skipped[0].message)
    assert "skipped 4 image file(s)" in msg and str(root / "bounding_box_train") in msg
    assert "'0004_x1.jpg', '0005_c0s1_000001_00.jpg', '7_c1x.jpg'" in msg and "bad.jpg" not in msg

    assert ds.stats() == {"train": {"images": 7, "ids": 3, "cams": 5},
                          "query": {"images": 2, "ids": 2, "cams": 2},
                          "gallery": {"images": 5, "ids": 3, "cams": 4}}
    assert {r.pid for r in ds.train} == {1, 2, 3}  # pid 0 and -1 dropped from train
    assert {r.pid for r in ds.gallery} == {0, 10, 11}  # distractor kept, junk dropped
    assert all(r.modality == "rgb" and os.path.isabs(r.path) for r in ds.split("gallery"))
    rec = next(r for r in ds.train if r.path.endswith("0003_c6s3_000400_02.jpg"))
    assert (rec.pid, rec.camid, rec.seq, rec.frame) == (3, 5, 3, 400)
    short = next(r for r in ds.gallery if r.path.endswith(".png"))
    assert (short.pid, short.camid, short.seq, short.frame) == (11, 3, None, 7)
    assert ds.root == str(root)


def test_market_identity_sequences_and_relabel(tmp_path, put):
    root = make_market(tmp_path / "world", put)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        ds = load_dataset("market_layout", root)
    seqs = ds.identity_sequences("train")
    assert list(seqs) == [1, 2, 3] and list(seqs[1]) == [0, 1]
    assert names(seqs[1][0]) == ["0001_c1s1_000050_00.jpg", "0001_c1s1_000100_00.jpg", "0001_c1s2_000001_00.jpg"]
    assert list(seqs[2]) == [2, 3]
    relabelled, mapping = relabel(ds.train)
    assert mapping == {1: 0, 2: 1, 3: 2}
    assert sorted({r.pid for r in relabelled}) == [0, 1, 2]


def test_market1501_subfolder_and_train_only(tmp_path, put):
    make_market(tmp_path / "Market-1501-v15.09.15", put)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        ds = load_dataset("Market-1501", tmp_path)
        assert ds.name == "market1501" and ds.root.endswith("Market-1501-v15.09.15")
        assert len(ds.train) == 7 and len(ds.query) == 2
        only = tmp_path / "pretrain"
        put(only / "bounding_box_train" / "0001_c1s1_000001_00.jpg")
        ds = load_dataset("market_layout", only, splits=["train"], name="diff_person")
    assert ds.name == "diff_person" and len(ds.train) == 1 and ds.query == [] and ds.gallery == []


def test_market_bad_input(tmp_path, put):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetError, match="dataset root not found") as err:
        load_dataset("market1501", missing)
    assert str(missing) in str(err.value)

    root = tmp_path / "m"
    put(root / "bounding_box_train" / "0001_c1s1_000001_00.jpg")
    put(root / "bounding_box_test" / "0001_c2s1_000001_00.jpg")
    with pytest.raises(DatasetError, match="query folder not found") as err:
        load_dataset("market_layout", root)
    assert str(root / "query") in str(err.value) and "bounding_box_train/" in str(err.value)

    (root / "query").mkdir()
    write_text(root / "query" / "Thumbs.db", "x")
    with pytest.raises(DatasetError, match="no images found") as err:
        load_dataset("market_layout", root)
    assert str(root / "query") in str(err.value) and "0002_c1s1_000451_03.jpg" in str(err.value)

    with pytest.raises(DatasetError, match="splits"):
        load_dataset("market_layout", root, splits=["test"])
    with pytest.raises(DatasetError, match="splits"):
        load_dataset("market_layout", root, splits="train")


# ---------------------------------------------------------------- CUHK03-NP

def test_cuhk03_variants(tmp_path, put):
    base = tmp_path / "cuhk03-np"
    for variant, extra in (("detected", 0), ("labeled", 1)):
        v = base / variant
        for n in ["0001_c1_1.png", "0001_c2_2.png", "0002_c1_1.png"] + ["0002_c2_3.png"] * extra:
            put(v / "bounding_box_train" / n)
        put(v / "query" / "0003_c1_1.png")
        for n in ("0003_c2_1.png", "0004_c1_1.png"):
            put(v / "bounding_box_test" / n)
    det = load_dataset("cuhk03", tmp_path)
    lab = load_dataset("cuhk03", base, variant="labeled")
    assert det.name == "cuhk03_detected" and lab.name == "cuhk03_labeled"
    assert det.stats()["train"] == {"images": 3, "ids": 2, "cams": 2}
    assert lab.stats()["train"] == {"images": 4, "ids": 2, "cams": 2}
    assert det.stats()["gallery"] == {"images": 2, "ids": 2, "cams": 2}
    assert [(r.pid, r.camid, r.frame) for r in det.query] == [(3, 0, 1)]

    with pytest.raises(DatasetError, match="variant='both'"):
        load_dataset("cuhk03", base, variant="both")
    shutil.rmtree(base / "labeled")
    with pytest.raises(DatasetError, match="CUHK03-NP variant folder not found") as err:
        load_dataset("cuhk03", base, variant="labeled")
    assert str(base / "labeled") in str(err.value)


# ---------------------------------------------------------------- MSMT17

MSMT_LISTS = {
    "list_train.txt": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_05_0303noon_0100_1.jpg 0",
                       "0001/0001_000_03_0303afternoon_0200_0.jpg 1"],
    "list_val.txt": ["0001/0001_001_15_0304morning_0011_0.jpg 1"],
    "list_query.txt": ["0000/0000_000_02_0303morning_0016_0.jpg 0"],
    "list_gallery.txt": ["0000/0000_001_07_0303noon_0017_0.jpg 0", "0001/0001_000_04_0304noon_0018_0.jpg 1"],
}


def make_msmt(base: Path, put, train_dir: str, test_dir: str) -> Path:
    for list_name, lines in MSMT_LISTS.items():
        write_text(base / list_name, "\n".join(lines) + "\n")
        folder = train_dir if list_name in ("list_train.txt", "list_val.txt") else test_dir
        for line in lines:
            put(base / folder / line.split()[0])
    return base


def test_msmt17_v1_v2_and_combine_val(tmp_path, put):
    make_msmt(tmp_path / "a" / "MSMT17_V1", put, "train", "test")
    ds = load_dataset("msmt17", tmp_path / "a")
    assert ds.stats() == {"train": {"images": 3, "ids": 2, "cams": 3},
                          "query": {"images": 1, "ids": 1, "cams": 1},
                          "gallery": {"images": 2, "ids": 2, "cams": 2}}
    assert [(r.pid, r.camid) for r in ds.train] == [(0, 0), (0, 4), (1, 2)]  # pid 0 is a real person here
    assert ds.train[0].path == str(tmp_path / "a" / "MSMT17_V1" / "train" / "0000" /
                                   "0000_000_01_0303morning_0015_0.jpg")
    full = load_dataset("msmt17", tmp_path / "a", combine_val=True)
    assert len(full.train) == 4 and full.train[-1].camid == 14

    make_msmt(tmp_path / "b", put, "mask_train_V2", "mask_test_V2")
    v2 = load_dataset("msmt17", tmp_path / "b")
    assert v2.stats() == ds.stats() and "mask_train_V2" in v2.train[0].path
    with pytest.raises(DatasetError, match="MSMT17 image folders not found") as err:
        load_dataset("msmt17", tmp_path / "b", version="v1")
    assert "train/ and test/" in str(err.value) and str(tmp_path / "b") in str(err.value)


def test_msmt17_bad_input(tmp_path, put):
    base = make_msmt(tmp_path / "m", put, "train", "test")
    lst = base / "list_query.txt"
    write_text(lst, "0000/0000_000_02_0303morning_0016_0.jpg 0\n0000/0000_000_02_x.jpg zero\n")
    with pytest.raises(DatasetError, match="malformed line") as err:
        load_dataset("msmt17", base)
    assert f"{lst}:2" in str(err.value) and "0000/0000_000_01_0303morning_0015_0.jpg 0" in str(err.value)

    write_text(lst, "0000/query.jpg 0\n")
    with pytest.raises(DatasetError, match="cannot read the camera") as err:
        load_dataset("msmt17", base)
    assert f"{lst}:1" in str(err.value)

    write_text(lst, "0000/0000_000_02_0303morning_0099_0.jpg 0\n")
    with pytest.raises(DatasetError, match="do not exist") as err:
        load_dataset("msmt17", base)
    assert str(lst) in str(err.value) and "0000_000_02_0303morning_0099_0.jpg" in str(err.value)
    assert len(load_dataset("msmt17", base, check_files=False).query) == 1

    lst.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="cannot read index file"):
        load_dataset("msmt17", base)
    lst.unlink()
    with pytest.raises(DatasetError, match="index file not found") as err:
        load_dataset("msmt17", base)
    assert str(lst) in str(err.value)


# ---------------------------------------------------------------- Airport

def test_airport_index_form(tmp_path, put):
    base = tmp_path / "AirportALERT"
    rows = [("1\\11001\\a.jpg", 11001, 1), ("2\\11001\\b.jpg", 11001, 2), ("5\\11002\\c.jpg", 11002, 5),
            ("5\\0\\d.jpg", 0, 5), ("1\\500000\\e.jpg", 500000, 1)]
    for rel, _, _ in rows:
        put(base / rel.replace("\\", "/"))
    write_text(base / "filepath.txt", "\n".join(r[0] for r in rows) + "\n")
    write_text(base / "personID.txt", "\n".join(str(r[1]) for r in rows) + "\n")
    write_text(base / "camID.txt", "\n".join(str(r[2]) for r in rows) + "\n")
    ds = load_dataset("airport", tmp_path)
    assert ds.stats()["train"] == {"images": 4, "ids": 3, "cams": 3}  # pid 0 dropped
    assert ds.query == [] and ds.gallery == []
    assert [(r.pid, r.camid) for r in ds.train] == [(11001, 0), (11001, 1), (11002, 2), (500000, 0)]
    assert ds.train[2].path == str(base / "5" / "11002" / "c.jpg")
    assert len(load_dataset("airport", base, pid_range=(11001, 401999)).train) == 3
    with pytest.raises(DatasetError, match="pid_range"):
        load_dataset("airport", base, pid_range=(5, 1))

    write_text(base / "camID.txt", "1\n2\n5\n")
    with pytest.raises(DatasetError, match="disagree") as err:
        load_dataset("airport", base)
    assert str(base / "camID.txt") in str(err.value)
    write_text(base / "camID.txt", "1\n2\ncam5\n5\n1\n")
    with pytest.raises(DatasetError, match="entry 3 is 'cam5'"):
        load_dataset("airport", base)


def test_airport_market_form_and_unknown_form(tmp_path, put):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        ds = load_dataset("airport", make_market(tmp_path / "airport_market", put))
    assert ds.name == "airport" and len(ds.query) == 2 and len(ds.gallery) == 5
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not an Airport dataset folder") as err:
        load_dataset("airport", tmp_path / "empty")
    assert "filepath.txt" in str(err.value) and "bounding_box_train/" in str(err.value)


# ---------------------------------------------------------------- SYSU-MM01

def make_sysu(base: Path, put) -> Path:
    write_text(base / "exp" / "train_id.txt", "1,2")
    write_text(base / "exp" / "val_id.txt", "3\n")
    write_text(base / "exp" / "test_id.txt", "4,5")
    absent = {(4, 5), (5, 6)}  # (pid, cam) pairs never recorded
    for pid in range(1, 6):
        for cam in range(1, 7):
            (base / f"cam{cam}").mkdir(parents=True, exist_ok=True)
            if (pid, cam) not in absent:
                for n in ("0001.jpg", "0002.jpg"):
                    put(base / f"cam{cam}" / f"{pid:04d}" / n)
    write_text(base / "cam1" / "0001" / "Thumbs.db", "x")
    return base


def test_sysu_mm01_splits_modalities_modes(tmp_path, put):
    base = make_sysu(tmp_path / "SYSU-MM01", put)
    ds = load_dataset("sysu-mm01", tmp_path)
    assert ds.name == "sysu_mm01_all"
    assert ds.stats() == {"train": {"images": 36, "ids": 3, "cams": 6},
                          "query": {"images": 6, "ids": 2, "cams": 2},
                          "gallery": {"images": 14, "ids": 2, "cams": 4}}
    assert {r.camid for r in ds.train if r.modality == "ir"} == {2, 5}
    assert {r.camid for r in ds.train if r.modality == "rgb"} == {0, 1, 3, 4}
    assert all(r.modality == "ir" for r in ds.query) and all(r.modality == "rgb" for r in ds.gallery)
    first = ds.train[0]
    assert (first.pid, first.camid, first.frame) == (1, 0, 1) and first.path == str(base / "cam1" / "0001" / "0001.jpg")

    indoor = load_dataset("sysu_mm01", base, mode="indoor")
    assert indoor.stats()["gallery"] == {"images": 8, "ids": 2, "cams": 2}
    assert load_dataset("sysu_mm01", base, include_val=False).stats()["train"] == {"images": 24, "ids": 2, "cams": 6}

    single = [load_dataset("sysu_mm01", base, gallery_shots=1, trial=t).gallery for t in range(6)]
    assert all(len(g) == 7 for g in single)  # one image per (id, camera): 3 + 4 pairs
    assert single[0] == load_dataset("sysu_mm01", base, gallery_shots=1, trial=0).gallery
    assert len({tuple(r.path for r in g) for g in single}) > 1  # the trial seed changes the draw
    assert len(load_dataset("sysu_mm01", base, gallery_shots=10).gallery) == 14


def test_sysu_mm01_bad_input(tmp_path, put):
    base = make_sysu(tmp_path / "sysu", put)
    with pytest.raises(DatasetError, match="mode='outdoor'"):
        load_dataset("sysu_mm01", base, mode="outdoor")
    with pytest.raises(DatasetError, match="gallery_shots"):
        load_dataset("sysu_mm01", base, gallery_shots=0)
    write_text(base / "exp" / "test_id.txt", "4,x")
    with pytest.raises(DatasetError, match="bad id 'x'") as err:
        load_dataset("sysu_mm01", base)
    assert f"{base / 'exp' / 'test_id.txt'}:1" in str(err.value) and "1,2,4,5,7" in str(err.value)
    (base / "exp" / "val_id.txt").unlink()
    with pytest.raises(DatasetError, match="id list not found") as err:
        load_dataset("sysu_mm01", base)
    assert str(base / "exp" / "val_id.txt") in str(err.value)
    shutil.rmtree(base / "cam4")
    with pytest.raises(DatasetError, match="SYSU-MM01 camera folder not found") as err:
        load_dataset("sysu_mm01", base)
    assert str(base / "cam4") in str(err.value)


# ---------------------------------------------------------------- RegDB

def make_regdb(base: Path, put) -> Path:
    for trial, offset in ((1, 0), (2, 10)):
        for split, pids in (("train", (1, 2)), ("test", (3,))):
            for kind, folder, tag in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
                lines = []
                for label, pid in enumerate(pids):
                    for k in (1, 2):
                        rel = f"{folder}/{pid + offset}/male_front_{tag}_{pid:05d}_{k}.bmp"
                        put(base / rel)
                        lines.append(f"{rel} {label}")
                write_text(base / "idx" / f"{split}_{kind}_{trial}.txt", "\n".join(lines) + "\n")
    return base


def test_regdb_trials_and_modalities(tmp_path, put):
    base = make_regdb(tmp_path / "RegDB", put)
    ds = load_dataset("regdb", tmp_path)
    assert ds.name == "regdb_trial1"
    assert ds.stats() == {"train": {"images": 8, "ids": 2, "cams": 2},
                          "query": {"images": 2, "ids": 1, "cams": 1},
                          "gallery": {"images": 2, "ids": 1, "cams": 1}}
    assert {(r.camid, r.modality) for r in ds.train} == {(0, "rgb"), (1, "ir")}
    assert all(r.modality == "rgb" and r.camid == 0 for r in ds.query)
    assert all(r.modality == "ir" and r.camid == 1 for r in ds.gallery)
    assert ds.train[0].path == str(base / "Visible" / "1" / "male_front_v_00001_1.bmp")
    t2i = load_dataset("regdb", base, trial=2, query_modality="ir")
    assert all(r.modality == "ir" for r in t2i.query) and "/Thermal/13/" in t2i.query[0].path


def test_regdb_bad_input(tmp_path, put):
    base = make_regdb(tmp_path / "RegDB", put)
    with pytest.raises(DatasetError, match="trial=11"):
        load_dataset("regdb", base, trial=11)
    with pytest.raises(DatasetError, match="query_modality='thermal'"):
        load_dataset("regdb", base, query_modality="thermal")
    with pytest.raises(DatasetError, match="index file not found") as err:
        load_dataset("regdb", base, trial=3)
    assert str(base / "idx" / "train_visible_3.txt") in str(err.value)
    bad = write_text(base / "idx" / "test_thermal_1.txt", "Thermal/3/male_front_t_00003_1.bmp\n")
    with pytest.raises(DatasetError, match="malformed line") as err:
        load_dataset("regdb", base)
    assert f"{bad}:1" in str(err.value) and "<relative image path> <integer label>" in str(err.value)


# ---------------------------------------------------------------- LLCM

def llcm_lines(base: Path, put, modality: str, pids, cams) -> str:
    lines = []
    for label, pid in enumerate(pids):
        for cam, frame in zip(cams, (7010, 7020, 7030)):
            rel = f"{modality}/{pid:04d}/{pid:04d}_c{cam:02d}_s185535_f{frame}_{modality}.jpg"
            put(base / rel)
            lines.append(f"{rel} {label}")
    return "\n".join(lines) + "\n"


def test_llcm_index_form(tmp_path, put):
    base = tmp_path / "LLCM"
    write_text(base / "idx" / "train_vis.txt", llcm_lines(base, put, "vis", (1, 2), (1, 2, 9)))
    write_text(base / "idx" / "train_nir.txt", llcm_lines(base, put, "nir", (1, 2), (1, 6)))
    write_text(base / "idx" / "test_vis.txt", llcm_lines(base, put, "vis", (3,), (4,)))
    write_text(base / "idx" / "test_nir.txt", llcm_lines(base, put, "nir", (3,), (5, 6)))
    ds = load_dataset("llcm", tmp_path)
    assert ds.stats() == {"train": {"images": 10, "ids": 2, "cams": 4},
                          "query": {"images": 2, "ids": 1, "cams": 2},
                          "gallery": {"images": 1, "ids": 1, "cams": 1}}
    assert all(r.modality == "ir" for r in ds.query) and all(r.modality == "rgb" for r in ds.gallery)
    rec = ds.train[2]
    assert (rec.pid, rec.camid, rec.modality, rec.seq, rec.frame) == (0, 8, "rgb", 185535, 7030)
    assert {r.camid for r in ds.train if r.modality == "ir"} == {0, 5}
    assert [r.frame for r in ds.identity_sequences("train")[1][0]] == [7010, 7010]
    vis_query = load_dataset("llcm", base, query_modality="rgb")
    assert all(r.modality == "rgb" for r in vis_query.query) and len(vis_query.gallery) == 2

    bad = write_text(base / "idx" / "test_nir.txt", "nir/0003/photo.jpg 0\n")
    with pytest.raises(DatasetError, match="cannot read the camera") as err:
        load_dataset("llcm", base)
    assert f"{bad}:1" in str(err.value) and "0001_c01_s185535_f7010_nir.jpg" in str(err.value)


def test_llcm_folder_test_split(tmp_path, put):
    base = tmp_path / "llcm"
    write_text(base / "idx" / "train_vis.txt", llcm_lines(base, put, "vis", (1,), (1,)))
    write_text(base / "idx" / "train_nir.txt", llcm_lines(base, put, "nir", (1,), (2,)))
    write_text(base / "idx" / "test_id.txt", "3,4")
    for rel in ("test_vis/cam1/0003/0003_c01_s200000_f0001_vis.jpg",
                "test_vis/cam2/0004/0004_c02_s200000_f0002_vis.jpg",
                "test_vis/cam2/0007/0007_c02_s200000_f0003_vis.jpg",
                "test_nir/cam4/0003/0003_c04_s200000_f0004_nir.jpg",
                "test_nir/cam5/0004/img.jpg"):
        put(base / rel)
    ds = load_dataset("llcm", base)
    assert ds.stats()["query"] == {"images": 2, "ids": 2, "cams": 2}
    assert ds.stats()["gallery"] == {"images": 2, "ids": 2, "cams": 2}  # id 7 is not a test id
    assert sorted((r.pid, r.camid, r.frame) for r in ds.query) == [(3, 3, 4), (4, 4, None)]
    shutil.rmtree(base / "test_nir")
    with pytest.raises(DatasetError, match="LLCM test folder not found") as err:
        load_dataset("llcm", base)
    assert str(base / "test_nir") in str(err.value)
    (base / "idx" / "test_id.txt").unlink()
    with pytest.raises(DatasetError, match="LLCM test split not found") as err:
        load_dataset("llcm", base)
    assert "test_vis.txt" in str(err.value)


# ---------------------------------------------------------------- registry

def test_registry_names_and_options(tmp_path):
    assert available_datasets() == ["airport", "cuhk02", "cuhk03", "cuhksysu", "grid", "ilids", "llcm", "market1501",
                                    "market_layout", "msmt17", "prid2011", "regdb", "sysu_mm01", "viper"]
    with pytest.raises(DatasetError, match="unknown dataset 'duke'") as err:
        load_dataset("duke", tmp_path)
    assert "market1501" in str(err.value)
    with pytest.raises(DatasetError, match="unknown option") as err:
        load_dataset("msmt17", tmp_path, combine_all=True)
    assert "combine_val" in str(err.value)
