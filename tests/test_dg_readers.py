"""Readers of the domain-generalisation datasets (CUHK02, CUHK-SYSU, PRID2011, GRID, VIPeR, QMUL i-LIDS) on small
fake trees of real (tiny) image files in each public layout."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffreid.data import DatasetError, DatasetWarning, ReIDDataset, available_datasets, load_dataset

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}


@pytest.fixture(scope="module")
def image_bytes() -> dict[str, bytes]:
    out = {}
    for ext, fmt in FORMATS.items():
        buf = io.BytesIO()
        Image.new("RGB", (4, 8), (40, 90, 160)).save(buf, fmt)
        out[ext] = buf.getvalue()
    return out


@pytest.fixture
def put(image_bytes):
    def write(folder: Path, *names: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).write_bytes(image_bytes[Path(name).suffix.lower()])
        return folder

    return write


def pids(records) -> set[int]:
    return {r.pid for r in records}


def check_files_exist(ds: ReIDDataset) -> None:
    for split in ("train", "query", "gallery"):
        assert all(os.path.isfile(r.path) for r in ds.split(split)), split


def check_splits(name: str, root: Path, **options) -> list[ReIDDataset]:
    """Every k gives disjoint train/test ids and the same split on a second read; the splits are not all alike."""
    splits = []
    for k in range(10):
        ds = load_dataset(name, root, split=k, **options)
        again = load_dataset(name, root, split=k, **options)
        assert (ds.train, ds.query, ds.gallery) == (again.train, again.query, again.gallery), k
        assert not pids(ds.train) & (pids(ds.query) | pids(ds.gallery)), k
        splits.append(ds)
    train_sets = [frozenset(pids(ds.train)) for ds in splits]
    assert train_sets[0] != train_sets[1] and len(set(train_sets)) >= 5
    return splits


def check_bad_split_option(name: str, root: Path) -> None:
    for bad in (10, -1, True, "1", 1.0):
        with pytest.raises(DatasetError, match=r"bad option split=.*expected an integer 0\.\.9"):
            load_dataset(name, root, split=bad)


# ---------------------------------------------------------------------------------------------- VIPeR

def make_viper(root: Path, put, people: int = 10) -> Path:
    base = root / "viper" / "VIPeR"
    put(base / "cam_a", *(f"{i:03d}_{45 * (i % 3)}.bmp" for i in range(people)))
    put(base / "cam_b", *(f"{i:03d}_{90 + 45 * (i % 2)}.bmp" for i in range(people)))
    (base / "cam_a" / "Thumbs.db").write_text("not an image")
    return root


def test_viper_pairs_counts_and_query_camera(tmp_path, put):
    root = make_viper(tmp_path / "data", put)
    ds = load_dataset("viper", root)
    assert ds.name == "viper_split0a" and ds.root == str(tmp_path / "data" / "viper" / "VIPeR")
    assert ds.stats() == {"train": {"images": 10, "ids": 5, "cams": 2}, "query": {"images": 5, "ids": 5, "cams": 1},
                          "gallery": {"images": 5, "ids": 5, "cams": 1}}
    assert pids(ds.train) | pids(ds.query) == set(range(1, 11))  # position + 1: no pid 0 (distractor)
    assert {r.camid for r in ds.query} == {0} and {r.camid for r in ds.gallery} == {1}
    assert pids(ds.query) == pids(ds.gallery)
    for r in ds.train + ds.query + ds.gallery:  # the k-th names of the two sorted folders are one person
        assert os.path.basename(r.path).startswith(f"{r.pid - 1:03d}_")
        assert os.path.basename(os.path.dirname(r.path)) == ("cam_a", "cam_b")[r.camid]
    check_files_exist(ds)
    reverse = load_dataset("viper", root, query_camera="b")
    assert reverse.name == "viper_split0b" and reverse.train == ds.train
    assert (reverse.query, reverse.gallery) == (ds.gallery, ds.query)
    check_splits("viper", root)


def test_viper_bad_input_names_the_path(tmp_path, put):
    root = make_viper(tmp_path / "v", put, people=4)
    base = root / "viper" / "VIPeR"
    check_bad_split_option("viper", root)
    with pytest.raises(DatasetError, match="bad option query_camera='c'"):
        load_dataset("viper", root, query_camera="c")
    sorted((base / "cam_b").iterdir())[-1].unlink()
    with pytest.raises(DatasetError, match="VIPeR cameras disagree") as err:
        load_dataset("viper", root)
    assert str(base / "cam_a") in str(err.value) and str(base / "cam_b") in str(err.value)
    for f in (base / "cam_b").iterdir():
        f.unlink()
    with pytest.raises(DatasetError, match="no images found") as err:
        load_dataset("viper", root)
    assert str(base / "cam_b") in str(err.value)
    (base / "cam_b").rmdir()
    with pytest.raises(DatasetError, match="VIPeR camera folder not found") as err:
        load_dataset("viper", root)
    assert str(base / "cam_b") in str(err.value) and "cam_a/ and cam_b/" in str(err.value)
    with pytest.raises(DatasetError, match="dataset root not found"):
        load_dataset("viper", tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- PRID2011

def make_prid(root: Path, put) -> Path:
    shot = root / "prid2011" / "prid_2011" / "single_shot"
    put(shot / "cam_a", *(f"person_{p:04d}.png" for p in range(1, 204)))  # 201-203: cam_a-only people
    put(shot / "cam_b", *(f"person_{p:04d}.png" for p in range(1, 211)))  # 201-210: cam_b-only people
    return root


def test_prid2011_protocol(tmp_path, put):
    root = make_prid(tmp_path / "data", put)
    ds = load_dataset("prid2011", root, split=3)
    assert ds.name == "prid2011_split3" and ds.root == str(tmp_path / "data" / "prid2011" / "prid_2011")
    assert ds.stats() == {"train": {"images": 200, "ids": 100, "cams": 2},
                          "query": {"images": 100, "ids": 100, "cams": 1},
                          "gallery": {"images": 110, "ids": 110, "cams": 1}}
    assert pids(ds.train) | pids(ds.query) == set(range(1, 201))
    assert {r.camid for r in ds.query} == {0} and {r.camid for r in ds.gallery} == {1}
    assert pids(ds.gallery) == pids(ds.query) | set(range(201, 211))  # cam_b-only people join the gallery
    assert all(os.path.basename(r.path) == f"person_{r.pid:04d}.png" for r in ds.train + ds.query + ds.gallery)
    check_files_exist(ds)
    check_splits("prid2011", root)


def test_prid2011_bad_input_names_the_path(tmp_path, put):
    root = make_prid(tmp_path / "p", put)
    shot = root / "prid2011" / "prid_2011" / "single_shot"
    check_bad_split_option("prid2011", root)
    put(shot / "cam_a", "person_x.png", "img_0001.png")
    with pytest.warns(DatasetWarning, match="skipped 2 image file"):
        load_dataset("prid2011", root)
    for name in ("person_x.png", "img_0001.png"):
        (shot / "cam_a" / name).unlink()
    (shot / "cam_b" / "person_0007.png").unlink()
    with pytest.raises(DatasetError, match="1 image.* missing, e.g. cam_b/person_0007.png") as err:
        load_dataset("prid2011", root)
    assert str(shot) in str(err.value)
    for f in (shot / "cam_b").iterdir():
        f.rename(f.with_name(f.name.replace("person_", "p")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        with pytest.raises(DatasetError, match="no images found") as err:
            load_dataset("prid2011", root)
    assert str(shot / "cam_b") in str(err.value) and "person_0001.png" in str(err.value)
    with pytest.raises(DatasetError, match="PRID2011 single-shot folder not found") as err:
        load_dataset("prid2011", tmp_path)
    assert "single_shot/cam_a/" in str(err.value)


# ---------------------------------------------------------------------------------------------- GRID

GRID_TAIL = "_25004_107_32_106_221.jpeg"


def make_grid(root: Path, put, ids: int = 10, distractors: int = 4) -> Path:
    base = root / "underground_reid"
    put(base / "probe", *(f"{p:04d}_{p % 8 + 1}{GRID_TAIL}" for p in range(1, ids + 1)))
    put(base / "gallery", *(f"{p:04d}_{(p + 3) % 8 + 1}{GRID_TAIL}" for p in range(1, ids + 1)),
        *(f"0000_{d % 8 + 1}_{d}0004_1_2_3_4.jpeg" for d in range(distractors)))
    return root


def official_partition(k: int) -> list[int]:
    return [(k + j) % 10 + 1 for j in range(5)]


def write_partition(path: Path, partitions: list[list[int]]) -> None:
    from scipy.io import savemat

    cells = np.empty((1, len(partitions)), dtype=object)
    for k, ids in enumerate(partitions):  # like the release: the third field of each struct lists the train ids
        cells[0, k] = {"featA": np.zeros((1, 2)), "featB": np.zeros((1, 2)), "train": np.array([ids], dtype=float)}
    savemat(str(path), {"trainIdxAll": cells})


def test_grid_random_splits_without_the_partition_file(tmp_path, put):
    root = make_grid(tmp_path / "data", put)
    ds = load_dataset("grid", root, split=2)
    assert ds.name == "grid_split2_random" and ds.root == str(tmp_path / "data" / "underground_reid")
    assert ds.stats() == {"train": {"images": 10, "ids": 5, "cams": len({r.camid for r in ds.train})},
                          "query": {"images": 5, "ids": 5, "cams": len({r.camid for r in ds.query})},
                          "gallery": {"images": 9, "ids": 6, "cams": len({r.camid for r in ds.gallery})}}
    assert pids(ds.gallery) == pids(ds.query) | {0}  # distractors stay in the gallery as pid 0
    assert 0 not in pids(ds.train) | pids(ds.query)
    assert all(r.camid == r.pid % 8 for r in ds.query)  # camera 1-8 in the name, 0-based in the record
    check_files_exist(ds)
    check_splits("grid", root)


def test_grid_official_partition(tmp_path, put):
    root = make_grid(tmp_path / "data", put)
    mat = root / "underground_reid" / "features_and_partitions.mat"
    write_partition(mat, [official_partition(k) for k in range(10)])
    for k in (0, 3, 9):
        ds = load_dataset("grid", root, split=k)
        assert ds.name == f"grid_split{k}"
        assert pids(ds.train) == set(official_partition(k))
        assert pids(ds.query) == set(range(1, 11)) - set(official_partition(k))
        assert len(ds.train) == 10 and len(ds.gallery) == 5 + 4
    check_splits("grid", root)
    write_partition(mat, [[1, 2, 99]] * 10)
    with pytest.raises(DatasetError, match=r"partition 0 names training ids with no image.*\[99\]") as err:
        load_dataset("grid", root)
    assert str(mat) in str(err.value)
    write_partition(mat, [official_partition(k) for k in range(3)])
    with pytest.raises(DatasetError, match="cannot read the GRID partition") as err:
        load_dataset("grid", root)
    assert str(mat) in str(err.value) and "trainIdxAll" in str(err.value)
    mat.write_text("not a MATLAB file")
    with pytest.raises(DatasetError, match="cannot read the GRID partition") as err:
        load_dataset("grid", root)
    assert str(mat) in str(err.value)


def test_grid_bad_input_names_the_path(tmp_path, put):
    root = make_grid(tmp_path / "g", put)
    base = root / "underground_reid"
    check_bad_split_option("grid", root)
    put(base / "probe", "snapshot.jpeg")
    with pytest.warns(DatasetWarning, match="snapshot.jpeg"):
        load_dataset("grid", root)
    (base / "probe" / "snapshot.jpeg").unlink()
    put(base / "gallery", "0003_0_1.jpeg")
    with pytest.raises(DatasetError, match="camera 0") as err:
        load_dataset("grid", root)
    assert str(base / "gallery" / "0003_0_1.jpeg") in str(err.value)
    for f in (base / "gallery").iterdir():
        f.unlink()
    (base / "gallery").rmdir()
    with pytest.raises(DatasetError, match="GRID gallery folder not found") as err:
        load_dataset("grid", root)
    assert str(base / "gallery") in str(err.value) and "0001_1_25004" in str(err.value)


# ---------------------------------------------------------------------------------------------- QMUL i-LIDS

def make_ilids(root: Path, put, people: int = 12) -> Path:
    persons = root / "ilids" / "i-LIDS_Pedestrian" / "Persons"
    put(persons, *(f"{p:04d}{n:03d}.jpg" for p in range(1, people + 1) for n in range(1, 2 + p % 3 + 1)))
    return root


def test_ilids_protocol(tmp_path, put):
    root = make_ilids(tmp_path / "data", put)
    ds = load_dataset("ilids", root, split=1)
    assert ds.name == "ilids_split1" and ds.root == str(tmp_path / "data" / "ilids" / "i-LIDS_Pedestrian")
    assert len(pids(ds.train)) == 6 and len(ds.query) == len(ds.gallery) == 6
    assert [r.pid for r in ds.query] == [r.pid for r in ds.gallery]  # one query and one gallery image per person
    assert all(q.path != g.path and q.camid != g.camid for q, g in zip(ds.query, ds.gallery))
    assert len(ds.train) == sum(2 + p % 3 for p in pids(ds.train))  # every image of the training people
    for r in ds.train + ds.query + ds.gallery:
        name = os.path.basename(r.path)
        assert (r.pid, r.camid, r.frame) == (int(name[:4]), int(name[4:7]) - 1, int(name[4:7]))
    check_files_exist(ds)
    splits = check_splits("ilids", root)
    assert len({tuple(r.path for r in s.query) for s in splits}) > 1


def test_ilids_bad_input_names_the_path(tmp_path, put):
    root = make_ilids(tmp_path / "i", put)
    persons = root / "ilids" / "i-LIDS_Pedestrian" / "Persons"
    check_bad_split_option("ilids", root)
    (persons / "0001002.jpg").unlink()
    (persons / "0001003.jpg").unlink()  # person 1 keeps one image: a split that tests on it cannot be built
    outcomes = []
    for k in range(10):
        try:
            outcomes.append(1 in pids(load_dataset("ilids", root, split=k).train))
        except DatasetError as err:
            assert "person 0001 has only 1 image" in str(err) and str(persons) in str(err)
            outcomes.append(None)
    assert None in outcomes and True in outcomes
    other = tmp_path / "bad" / "Persons"
    put(other, "img.jpg", "00011.jpg", "0001ab1.jpg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        with pytest.raises(DatasetError, match="no images found") as err:
            load_dataset("ilids", tmp_path / "bad")
    assert str(other) in str(err.value) and "0001001.jpg" in str(err.value)
    with pytest.raises(DatasetError, match="i-LIDS image folder not found") as err:
        load_dataset("ilids", tmp_path / "bad" / "Persons")
    assert "Persons/" in str(err.value)


# ---------------------------------------------------------------------------------------------- DG training sources

def make_cuhk02(root: Path, put) -> Path:
    base = root / "cuhk02" / "Dataset"
    for k in range(1, 6):
        for cam in (1, 2):
            put(base / f"P{k}" / f"cam{cam}", *(f"{i:04d}_{n}.png" for i in range(1, k + 2) for n in (1, 2)))
    return root


def test_cuhk02_is_all_train_with_pair_distinct_pids(tmp_path, put):
    root = make_cuhk02(tmp_path / "data", put)
    ds = load_dataset("cuhk02", root)
    assert ds.name == "cuhk02" and ds.root == str(tmp_path / "data" / "cuhk02" / "Dataset")
    assert ds.query == [] and ds.gallery == []
    assert len(ds.train) == sum(2 * 2 * (k + 1) for k in range(1, 6))
    assert pids(ds.train) == {10000 * k + i for k in range(1, 6) for i in range(1, k + 2)}
    assert {r.camid for r in ds.train} == set(range(10))
    for r in ds.train:
        pair, cam = Path(r.path).parts[-3:-1]
        assert r.pid // 10000 == int(pair[1:]) and r.camid == 2 * (int(pair[1:]) - 1) + int(cam[3:]) - 1
    check_files_exist(ds)
    with pytest.raises(DatasetError, match="unknown option.*split.*no options"):
        load_dataset("cuhk02", root, split=1)


def test_cuhk02_bad_input_names_the_path(tmp_path, put):
    root = make_cuhk02(tmp_path / "c", put)
    base = root / "cuhk02" / "Dataset"
    for f in (base / "P3" / "cam2").iterdir():
        f.rename(f.with_name("x" + f.name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        with pytest.raises(DatasetError, match="no images found") as err:
            load_dataset("cuhk02", root)
    assert str(base / "P3" / "cam2") in str(err.value) and "0001_1.png" in str(err.value)
    for f in (base / "P3" / "cam2").iterdir():
        f.rename(f.with_name(f.name[1:]))
    for f in (base / "P5" / "cam1").iterdir():
        f.unlink()
    (base / "P5" / "cam1").rmdir()
    with pytest.raises(DatasetError, match="CUHK02 camera folder not found") as err:
        load_dataset("cuhk02", base)
    assert str(base / "P5" / "cam1") in str(err.value) and "P1/ .. P5/" in str(err.value)


def test_cuhksysu_is_all_train(tmp_path, put):
    crops = put(tmp_path / "data" / "cuhksysu" / "cropped_images", "p1_s10_1.jpg", "p1_s11_2.jpg", "p11422_s16929_1.jpg",
                "p7_s3.jpg", "scene.jpg")
    with pytest.warns(DatasetWarning, match="scene.jpg"):
        ds = load_dataset("CUHK-SYSU", tmp_path / "data")
    assert ds.name == "cuhksysu" and ds.query == [] and ds.gallery == []
    assert sorted((r.pid, r.camid, r.seq) for r in ds.train) == [(1, 0, 10), (1, 0, 11), (7, 0, 3), (11422, 0, 16929)]
    check_files_exist(ds)
    for f in crops.iterdir():
        f.rename(f.with_name(f.name.lstrip("p")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DatasetWarning)
        with pytest.raises(DatasetError, match="no images found") as err:
            load_dataset("cuhksysu", tmp_path / "data")
    assert str(crops) in str(err.value) and "p11422_s16929_1.jpg" in str(err.value)
    with pytest.raises(DatasetError, match="CUHK-SYSU crop folder not found") as err:
        load_dataset("cuhksysu", tmp_path)
    assert str(tmp_path / "cropped_images") in str(err.value)


def test_names_and_aliases_are_registered(tmp_path, put):
    assert {"cuhk02", "cuhksysu", "grid", "ilids", "prid2011", "viper"} <= set(available_datasets())
    make_ilids(tmp_path, put)
    assert load_dataset("i-LIDS", tmp_path).name == load_dataset("QMUL_iLIDS", tmp_path).name == "ilids_split0"
    make_prid(tmp_path, put)
    assert load_dataset("PRID", tmp_path).name == load_dataset("prid_2011", tmp_path).name == "prid2011_split0"
