"""finetune-eval's unsupervised (cluster contrast, Dai et al. 2021), uda and dg settings: Jaccard + DBSCAN
pseudo-labels, config errors naming the field, and each setting end to end on tiny toy worlds (resnet18, 64x32,
1-2 epochs of a few iterations)."""
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from diffreid.config import ConfigError
from diffreid.data import load_dataset
from diffreid.data.toyworld import ToyWorldConfig, render_world
from diffreid.data.types import ImageRecord, ReIDDataset
from diffreid.reid.cluster_contrast import ClusterContrastConfig, pseudo_labels
from diffreid.reid.finetune import (FinetuneEvalConfig, dg_labels, merge_sources, planned_runs, run_finetune_eval,
                                    DatasetRef)
from diffreid.reid.metrics import compute_distmat, jaccard_distance, jaccard_distance_knn

TRAIN = {"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 4, "K": 2, "epochs": 1,
         "iters_per_epoch": 3, "warmup_epochs": 0, "milestones": [5], "num_workers": 0, "pad": 2}
CLUSTER = {"k1": 10, "k2": 6, "epochs": 2, "iters_per_epoch": 2, "P": 4, "K": 4}  # ~110 images: k1 30 -> 10


def blobs(n_clusters=4, per=10, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 5
    x = np.concatenate([c + rng.normal(size=(per, dim)) * 0.3 for c in centres])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(n_clusters), per)


def test_jaccard_distance_is_a_symmetric_k_reciprocal_distance():
    x, truth = blobs()
    d = 1 - x @ x.T
    jac = jaccard_distance(np.clip(d, 0, None), k1=8, k2=3)
    assert jac.shape == (40, 40) and np.allclose(jac, jac.T) and np.all(np.diag(jac) == 0)
    assert jac.min() >= 0 and jac.max() <= 1
    same = truth[:, None] == truth[None, :]
    assert jac[same & ~np.eye(40, dtype=bool)].max() < jac[~same].min(), "neighbours share k-reciprocal sets"
    with pytest.raises(ValueError, match="k1=40"):
        jaccard_distance(d.clip(0), k1=40)


def test_knn_jaccard_is_sparse_and_clusters_like_the_dense_one():
    from scipy import sparse
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import adjusted_rand_score

    x, truth = blobs(n_clusters=5, per=20, dim=32, seed=1)
    n = len(x)
    jac = jaccard_distance_knn(x, k1=10, k2=6)
    assert sparse.isspmatrix_csr(jac) and jac.shape == (n, n)
    assert jac.nnz < n * n / 4, "only pairs with overlapping neighbour weights are stored"
    assert abs(jac - jac.T).max() == 0 and jac.min() >= 0 and jac.max() <= 1
    coo = jac.tocoo()
    on_diagonal = coo.row == coo.col
    assert sorted(coo.row[on_diagonal]) == list(range(n)) and np.all(coo.data[on_diagonal] == 0), \
        "the zero diagonal is stored explicitly"
    dense = jaccard_distance(compute_distmat(x, x, "cosine"), k1=10, k2=6)
    coo = jac.tocoo()
    stored = np.ones((n, n), dtype=np.float32)  # what the sparse matrix means: absent = distance 1
    stored[coo.row, coo.col] = coo.data
    missing = np.ones((n, n), dtype=bool)
    missing[coo.row, coo.col] = False
    assert np.all(dense[missing] > 0.99), "pairs left out are (near) distance 1 in the dense version too"
    assert np.abs(stored - dense)[~missing].max() < 0.05, "only the weight scaling differs"
    dbscan = DBSCAN(eps=0.6, min_samples=4, metric="precomputed")
    sparse_labels, dense_labels = dbscan.fit_predict(jac), dbscan.fit_predict(dense)
    assert adjusted_rand_score(dense_labels, sparse_labels) == 1.0
    assert adjusted_rand_score(truth, sparse_labels) == 1.0
    near = jaccard_distance_knn(x, k1=10, k2=6, max_distance=0.3)
    assert near.nnz < jac.nnz and near.max() <= 0.3
    kept = jac.tocoo()
    kept = {(r, c): v for r, c, v in zip(kept.row, kept.col, kept.data) if v <= 0.3 or r == c}
    got = near.tocoo()
    assert {(r, c): v for r, c, v in zip(got.row, got.col, got.data)} == kept, "max_distance drops only farther pairs"
    tight = DBSCAN(eps=0.3, min_samples=4, metric="precomputed")
    assert np.array_equal(tight.fit_predict(near), tight.fit_predict(jac))
    for bad in ({"k1": 0}, {"k2": 0}, {"k1": 100}, {"k1": 10, "max_distance": 1.5}):
        with pytest.raises(ValueError):
            jaccard_distance_knn(x, **bad)
    with pytest.raises(ValueError, match="features"):
        jaccard_distance_knn(x[0])


def test_pseudo_labels_use_the_knn_jaccard_above_the_threshold():
    x, truth = blobs()
    dense = pseudo_labels(x, ClusterContrastConfig(k1=8, k2=3))
    knn = pseudo_labels(x, ClusterContrastConfig(k1=8, k2=3, dense_jaccard_max=10))
    assert knn.max() + 1 == 4 and len({(a, b) for a, b in zip(knn, dense)}) == 4


def test_dbscan_pseudo_labels_recover_the_clusters():
    x, truth = blobs()
    labels = pseudo_labels(x, ClusterContrastConfig(k1=8, k2=3))
    assert labels.max() + 1 == 4 and (labels >= 0).all()
    assert len({(a, b) for a, b in zip(labels, truth)}) == 4, "one pseudo-label per true cluster"
    with pytest.raises(ValueError, match="cluster.k1"):
        pseudo_labels(x, ClusterContrastConfig(k1=40))


def test_config_errors_name_the_field(tmp_path):
    root = {"root": str(tmp_path)}
    with pytest.raises(ConfigError, match="uda_source"):
        FinetuneEvalConfig.load(target=root, settings=["uda"])
    with pytest.raises(ConfigError, match="dg_sources"):
        FinetuneEvalConfig.load(settings=["dg"], dg_targets=[root])
    with pytest.raises(ConfigError, match="dg_targets"):
        FinetuneEvalConfig.load(settings=["dg"], dg_sources=[root])
    with pytest.raises(ConfigError, match="target is not set"):
        FinetuneEvalConfig.load(settings=["unsupervised"])
    with pytest.raises(ConfigError, match="cluster.eps"):
        FinetuneEvalConfig.load(target=root, settings=["unsupervised"], cluster={"eps": 1.5})
    with pytest.raises(ConfigError, match="dg_splits"):
        FinetuneEvalConfig.load(settings=["dg"], dg_sources=[root], dg_targets=[root], dg_splits=11)
    # dg alone needs no target; every named folder is checked before a run
    cfg = FinetuneEvalConfig.load(settings=["dg", "uda"], target=root, uda_source={"root": str(tmp_path / "s")},
                                  dg_sources=[root], dg_targets=[{"name": "viper", "root": str(tmp_path / "v")}])
    assert cfg.missing_files() == [f"uda_source.root: folder {tmp_path / 's'} does not exist",
                                   f"dg_targets[0].root: folder {tmp_path / 'v'} does not exist"]
    assert FinetuneEvalConfig.load(settings=["dg"], dg_sources=[root], dg_targets=[root]).target is None


def test_planned_runs_and_labels(tmp_path):
    root = {"root": str(tmp_path)}
    cfg = FinetuneEvalConfig.load(target=root, uda_source=root, dg_sources=[root], dg_targets=[root],
                                  settings=["unsupervised", "uda", "dg"], seeds=[0, 1],
                                  inits={"random": None, "other": None})
    runs = planned_runs(cfg)
    assert len(runs) == 2 * 2 * 3
    assert {(r["setting"], r["percent"]) for r in runs} == {("unsupervised", 100), ("uda", 100), ("dg", 100)}
    refs = [DatasetRef(name=n, root="/x") for n in ("viper", "market_layout", "market_layout")]
    assert dg_labels(refs) == ["dg:viper", "dg:market_layout[1]", "dg:market_layout[2]"]


def test_merge_sources_keeps_identities_and_cameras_apart():
    a = ReIDDataset("a", "/a", train=[ImageRecord("/a/1", 5, 0), ImageRecord("/a/2", 9, 1)])
    b = ReIDDataset("b", "/b", train=[ImageRecord("/b/1", 5, 0), ImageRecord("/b/2", 7, 2)])
    merged = merge_sources([a, b])
    assert [(r.path, r.pid, r.camid) for r in merged] == [("/a/1", 1, 0), ("/a/2", 2, 1), ("/b/1", 3, 2),
                                                          ("/b/2", 4, 4)]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    base = tmp_path_factory.mktemp("worlds")
    target = render_world(ToyWorldConfig(ids_train=8, ids_test=6, cams=3, height=64, width=32, seed=5),
                          base / "target")
    source = render_world(ToyWorldConfig(ids_train=6, ids_test=4, cams=3, height=64, width=32, seed=6,
                                         pid_offset=100, cam_offset=3), base / "source")
    return {"target": target, "source": source, "base": base}


def fake_viper(world, out):
    """A VIPeR tree (cam_a/, cam_b/, one image per person each, paired by sorted name) from a 2-camera toy world."""
    dataset = load_dataset("market_layout", world)
    by_pid = {}
    for r in dataset.train + dataset.gallery:
        by_pid.setdefault(r.pid, {}).setdefault(r.camid, r.path)
    people = [cams for _, cams in sorted(by_pid.items()) if 0 in cams and 1 in cams]
    for cam, letter in ((0, "a"), (1, "b")):
        (out / f"cam_{letter}").mkdir(parents=True)
        for i, cams in enumerate(people):
            shutil.copy(cams[cam], out / f"cam_{letter}" / f"{i:03d}_{90 * cam}.jpg")
    return out, len(people)


def test_unsupervised_from_two_inits(worlds, tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "resnet18.safetensors"  # a timm file init beside random, as a user's ImageNet file
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(weights))
    cfg = FinetuneEvalConfig.load(target={"root": str(worlds["target"])}, settings=["unsupervised"],
                                  inits={"random": None, "timm_file": str(weights)}, train=TRAIN, cluster=CLUSTER)
    df = run_finetune_eval(cfg, tmp_path / "out", progress=False)
    assert list(df.init) == ["random", "timm_file"] and set(df.setting) == {"unsupervised"}
    assert (df.pseudo_ids > 1).all(), "DBSCAN found several pseudo-identities"
    assert (df.train_images == 111).all() and (df.outliers < df.train_images).all()
    assert np.isfinite(df[["mAP", "Rank-1", "mINP"]].to_numpy()).all()
    assert df[["mAP", "Rank-1", "mINP"]].apply(lambda c: c.between(0, 1)).all().all()
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| unsupervised | 100 |" in md and "random mAP/R1" in md and "timm_file mAP/R1" in md


def test_uda_source_to_target(worlds, tmp_path):
    cfg = FinetuneEvalConfig.load(target={"root": str(worlds["target"])}, uda_source={"root": str(worlds["source"])},
                                  settings=["uda"], train=TRAIN, cluster=CLUSTER)
    df = run_finetune_eval(cfg, tmp_path / "out", progress=False)
    (row,) = df.itertuples()
    assert row.setting == "uda" and row.eval_dataset == "market_layout" and row.pseudo_ids > 1
    assert 0 <= row.mAP <= 1 and np.isfinite(row.mAP)
    assert "| uda | 100 |" in (tmp_path / "out" / "results.md").read_text()


def test_dg_merged_sources_over_target_splits(worlds, tmp_path):
    two_cams = render_world(ToyWorldConfig(ids_train=6, ids_test=6, cams=2, height=64, width=32, seed=7,
                                           pid_offset=200, cam_offset=6), worlds["base"] / "viper_src")
    viper, people = fake_viper(two_cams, tmp_path / "VIPeR")
    assert people == 12
    cfg = FinetuneEvalConfig.load(
        settings=["dg"], dg_sources=[{"root": str(worlds["target"])}, {"root": str(worlds["source"])}],
        dg_targets=[{"name": "viper", "root": str(viper)}, {"root": str(two_cams)}], dg_splits=2, train=TRAIN)
    df = run_finetune_eval(cfg, tmp_path / "out", progress=False)
    assert (df.train_ids == 8 + 6).all(), "the two sources' identities stay apart"
    vip = df[df.setting == "dg:viper"]
    assert list(vip.split) == [0, 1] and list(vip.eval_dataset) == ["viper_split0a", "viper_split1a"]
    assert df[df.setting == "dg:market_layout"].split.isna().all(), "a reader without split is read once"
    summary = pd.read_csv(tmp_path / "out" / "results.csv")
    row = summary[summary.setting == "dg:viper"].iloc[0]
    assert row.seeds == 2 and row.mAP == pytest.approx(vip.mAP.mean()) and row.mAP_std == pytest.approx(
        vip.mAP.std(ddof=0))
    assert "| dg:viper | 100 |" in (tmp_path / "out" / "results.md").read_text()


def test_check_accepts_the_new_settings(tmp_path, capsys):
    from diffreid.cli import main

    for name in ("t", "s", "v"):
        (tmp_path / name).mkdir()
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({
        "target": {"root": str(tmp_path / "t")}, "uda_source": {"root": str(tmp_path / "s")},
        "dg_sources": [{"root": str(tmp_path / "t")}, {"root": str(tmp_path / "s")}],
        "dg_targets": [{"name": "viper", "root": str(tmp_path / "v")}], "dg_splits": 2,
        "settings": ["unsupervised", "uda", "dg"], "inits": {"random": None}, "cluster": CLUSTER, "train": TRAIN}))
    assert main(["check", str(path)]) == 0
    assert "valid finetune_eval config" in capsys.readouterr().out
