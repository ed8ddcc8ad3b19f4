"""Filtering stage: config errors, the FAISS gallery (build/search/save/load, three index types), the three
filters through one call, and honest separation on the toy world with a Re-ID model from the project's
trainer (slow)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffreid.config import ConfigError, RuntimeConfig
from diffreid.data.toyworld import (ToyWorldConfig, make_camera, render_person, render_world, sample_identity,
                                    world_cameras, world_identities)
from diffreid.filtering import (CCTF, CLIPFilter, FaissGallery, FilterConfig, FilterError, GalleryError,
                                IdentityClassifier, ImageFilter, ReIDCTF, build_filters, build_or_load,
                                build_tiny_clip, decide, model_extractor, score_all)
from diffreid.filtering.reid_ctf import similarity_floor
from diffreid.io import save_image_atomic
from diffreid.reid.model import ReIDModelConfig, build_reid_model, save_reid_model

torch.set_num_threads(2)
H, W = 64, 32


def write_records(folder, images, pids) -> list:
    """The images as Market-named files in ``folder``, one ImageRecord each (camera 0)."""
    from diffreid.data.types import ImageRecord

    records = []
    for i, (img, pid) in enumerate(zip(images, pids)):
        path = folder / f"{pid:04d}_c1s1_{i:06d}_00.jpg"
        save_image_atomic(img, path)
        records.append(ImageRecord(str(path), int(pid), 0))
    return records


def auroc(pos, neg) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    pos, neg = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def clustered(n_ids=6, per_id=5, dim=16, spread=0.15, seed=0):
    """Unit-norm features around one random centre per pid (pids 10, 20, ...)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    pids = np.repeat(np.arange(1, n_ids + 1) * 10, per_id)
    feats = np.repeat(centres, per_id, axis=0) + rng.normal(scale=spread, size=(n_ids * per_id, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats.astype(np.float32), pids, centres


def near(centres, idx, seed=1, spread=0.15):
    rng = np.random.default_rng(seed)
    q = centres[idx] + rng.normal(scale=spread, size=(len(idx), centres.shape[1]))
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def brute_force_softmax(q, feats, pids, claimed, tau):
    """Reference: softmax over per-identity max cosine similarity, read off the full similarity matrix."""
    sims = q @ feats.T
    out = []
    for row, c in zip(sims, claimed):
        ids = np.unique(pids)
        per_id = np.array([row[pids == p].max() for p in ids])
        z = np.exp((per_id - per_id.max()) / tau)
        out.append(z[ids == c][0] / z.sum())
    return np.array(out)


@pytest.fixture(scope="module")
def person_images():
    """Toy-world crops of 3 people (pids 1..3), 4 each, from different cameras."""
    images, pids = [], []
    rng = np.random.default_rng(5)
    for pid in (1, 2, 3):
        ident = sample_identity(np.random.default_rng([9, pid]), pid)
        for k in range(4):
            images.append(render_person(ident, make_camera(k + 1), None, rng, H, W))
            pids.append(pid)
    return images, np.array(pids)


@pytest.fixture(scope="module")
def untrained_model_dir(tmp_path_factory):
    """A real (random-init) ResNet-18 Re-ID model saved the project's way: plumbing, not separation."""
    torch.manual_seed(0)
    model = build_reid_model(ReIDModelConfig(backbone="resnet18"), num_classes=3).eval()
    model.input_size = (H, W)
    return save_reid_model(model, ReIDModelConfig(backbone="resnet18"), tmp_path_factory.mktemp("reid_untrained"))


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip", seed=0)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, field", [
    (["threshold=1.5"], "threshold"),
    (["threshold=-0.1"], "threshold"),
    (["thresholds={cctf: 2}"], "thresholds.cctf"),
    (["filters=[reid_ctf, sharpness]"], "filters.1"),
    (["thresholds={blur: 0.3}"], "thresholds.blur"),
    (["filters=[cctf]"], "decide_by"),
    (["temperature=0"], "temperature"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        FilterConfig.load(None, overrides)
    assert f"- {field}" in str(err.value)


def test_config_defaults_and_overrides(tmp_path):
    cfg = FilterConfig.load(None)
    assert cfg.filters == ["reid_ctf"] and cfg.decide_by == "reid_ctf" and cfg.index_type == "flat_ip"
    path = tmp_path / "f.yaml"
    path.write_text("filters: [reid_ctf, cctf, clip]\nthreshold: 0.6\nthresholds: {clip: 0.3}\n")
    cfg = FilterConfig.load(path, ["index_type=hnsw"])
    assert cfg.threshold_of("reid_ctf") == 0.6 and cfg.threshold_of("cctf") == 0.6
    assert cfg.threshold_of("clip") == 0.3 and cfg.index_type == "hnsw"


# --------------------------------------------------------------------------------------------- gallery
@pytest.mark.parametrize("index_type", ["flat_ip", "ivf", "hnsw"])
def test_gallery_search_save_load_round_trip(tmp_path, index_type):
    feats, pids, centres = clustered(n_ids=10, per_id=40, dim=16)  # 400 points: IVF gets 10 lists
    gallery = FaissGallery.build(feats, pids, index_type=index_type, ivf_nlist=16, ivf_nprobe=16)
    queries = near(centres, np.arange(10))
    found = gallery.search(queries, 5)
    exact = np.argsort(-(queries @ feats.T), axis=1, kind="stable")[:, :5]
    if index_type == "flat_ip":
        assert np.array_equal(found.rows, exact)
    else:  # approximate, but with every list probed / a large ef it finds the true nearest neighbour
        assert (found.rows[:, 0] == exact[:, 0]).mean() >= 0.9
    assert np.array_equal(found.pids, pids[found.rows])
    assert np.all(np.diff(found.sims, axis=1) <= 1e-6)
    gallery.save(tmp_path / "g")
    loaded = FaissGallery.load(tmp_path / "g")
    again = loaded.search(queries, 5)
    assert np.array_equal(again.rows, found.rows) and np.array_equal(again.sims, found.sims)
    assert np.array_equal(loaded.features, feats) and loaded.meta == gallery.meta
    assert loaded.meta["index_type"] == index_type


def test_gallery_k_is_capped_and_ivf_lists_shrink_for_small_galleries():
    feats, pids, _ = clustered(n_ids=3, per_id=4)
    gallery = FaissGallery.build(feats, pids, index_type="ivf", ivf_nlist=100)
    assert gallery.meta["params"]["nlist"] == 1
    assert gallery.search(feats[:2], 1000).rows.shape == (2, 12)


def test_gallery_rejects_bad_input(tmp_path):
    feats, pids, _ = clustered()
    with pytest.raises(GalleryError, match="L2-normalised"):
        FaissGallery.build(feats * 2, pids)
    with pytest.raises(GalleryError, match="float32"):
        FaissGallery.build(feats.astype(np.float64), pids)
    with pytest.raises(GalleryError, match="one per feature row"):
        FaissGallery.build(feats, pids[:-1])
    gallery = FaissGallery.build(feats, pids)
    with pytest.raises(GalleryError, match="dimension 16"):
        gallery.search(np.eye(2, 8, dtype=np.float32), 1)
    with pytest.raises(GalleryError, match="pid 999"):
        gallery.rows_of(999)
    with pytest.raises(GalleryError, match="missing"):
        FaissGallery.load(tmp_path)
    keep = tmp_path / "user_data"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(GalleryError, match="not a folder this code wrote"):
        gallery.save(keep)
    assert (keep / "notes.txt").read_text() == "mine"


def test_build_or_load_reuses_until_the_sources_change(tmp_path, person_images, untrained_model_dir):
    images, pids = person_images
    records = write_records(tmp_path / "src", images, pids)
    extract = model_extractor(untrained_model_dir, RuntimeConfig(device="cpu"))
    calls = []

    def counting_extract(items):
        calls.append(len(items))
        return extract(items)

    first = build_or_load(tmp_path / "gal", records, counting_extract, model_key="m1")
    second = build_or_load(tmp_path / "gal", records, counting_extract, model_key="m1")
    assert calls == [12] and np.array_equal(first.features, second.features)
    build_or_load(tmp_path / "gal", records[:-1], counting_extract, model_key="m1")
    build_or_load(tmp_path / "gal", records[:-1], counting_extract, model_key="m2")
    assert calls == [12, 11, 11]
    assert json.loads((tmp_path / "gal" / "gallery.json").read_text())["count"] == 11


# -------------------------------------------------------------------------------------------- Re-ID CTF
def test_reid_ctf_softmax_matches_the_definition():
    feats, pids, centres = clustered(n_ids=6, per_id=5, spread=0.3)
    gallery = FaissGallery.build(feats, pids)
    truth = np.repeat(np.arange(6), 3)
    q = near(centres, truth, spread=0.3)
    own_pids, wrong_pids = (truth + 1) * 10, ((truth + 1) % 6 + 1) * 10
    flt = ReIDCTF(extract=None, gallery=gallery, temperature=0.1, search_k=10_000, threshold=0.5)
    for claimed in (own_pids, wrong_pids):
        res = flt.score_features(q, claimed)
        np.testing.assert_allclose(res.scores, brute_force_softmax(q, feats, pids, claimed, 0.1), atol=1e-5)
        assert np.array_equal(res.keep, res.scores >= 0.5)
        sims = q @ feats.T
        own = np.array([s[pids == c].max() for s, c in zip(sims, claimed)])
        other = np.array([s[pids != c].max() for s, c in zip(sims, claimed)])
        np.testing.assert_allclose(res.extras["own_sim"], own, atol=1e-6)
        np.testing.assert_allclose(res.extras["margin"], own - other, atol=1e-6)
        assert np.all(res.extras["best_other_pid"] != claimed)
    own_scores, wrong_scores = flt.score_features(q, own_pids).scores, flt.score_features(q, wrong_pids).scores
    assert own_scores.mean() > 0.4 > 0.1 > wrong_scores.mean() and auroc(own_scores, wrong_scores) > 0.9


def test_reid_ctf_modes_and_truncated_search():
    feats, pids, centres = clustered(n_ids=8, per_id=6, spread=0.3)
    gallery = FaissGallery.build(feats, pids)
    q = near(centres, np.arange(8), spread=0.3)
    claimed = (np.arange(8) + 1) * 10
    exact = ReIDCTF(None, gallery, mode="softmax", temperature=0.05, search_k=1000).score_features(q, claimed)
    top5 = ReIDCTF(None, gallery, mode="softmax", temperature=0.05, search_k=5).score_features(q, claimed)
    # fewer rivals seen -> confidence can only rise; the own similarity stays exact
    assert np.all(top5.scores >= exact.scores - 1e-6)
    np.testing.assert_array_equal(top5.extras["own_sim"], exact.extras["own_sim"])
    margin = ReIDCTF(None, gallery, mode="margin", temperature=0.05).score_features(q, claimed)
    np.testing.assert_allclose(margin.scores, 1 / (1 + np.exp(-exact.extras["margin"] / 0.05)), atol=1e-5)
    sim = ReIDCTF(None, gallery, mode="similarity").score_features(q, claimed)
    np.testing.assert_allclose(sim.scores, np.clip(exact.extras["own_sim"], 0, 1), atol=1e-6)
    for index_type in ("ivf", "hnsw"):  # small gallery: every list probed / ef >= k, so same answer
        other = FaissGallery.build(feats, pids, index_type=index_type)
        approx = ReIDCTF(None, other, mode="softmax", temperature=0.05, search_k=1000).score_features(q, claimed)
        np.testing.assert_allclose(approx.scores, exact.scores, atol=1e-5)
    with pytest.raises(FilterError, match="mode"):
        ReIDCTF(None, gallery, mode="best")


def test_reid_ctf_similarity_floor_drops_what_is_close_to_nobody():
    feats, pids, centres = clustered(n_ids=6, per_id=5, dim=16)
    gallery = FaissGallery.build(feats, pids)
    # random directions: close to nobody, yet each relatively nearest to one identity, which it claims
    stray = l2n(np.random.default_rng(3).normal(size=(40, 16)))
    pick = np.argsort(-(stray @ centres.T).max(axis=1))[10:12]  # not the luckiest ones
    stray = stray[pick]
    queries = np.concatenate([near(centres, [0, 1]), stray])
    claimed = np.concatenate([[10, 20], ((stray @ centres.T).argmax(axis=1) + 1) * 10])
    plain = ReIDCTF(lambda x: x, gallery, temperature=0.05).score_features(queries, claimed)
    floored = ReIDCTF(lambda x: x, gallery, temperature=0.05, min_similarity="auto").score_features(queries, claimed)
    floor = similarity_floor(gallery)
    assert 0 < floor < 1
    own = floored.extras["own_sim"]
    assert np.all(own[:2] >= floor) and np.all(own[2:] < floor)
    assert np.allclose(floored.scores[:2], plain.scores[:2]) and np.all(floored.scores[2:] == 0)
    assert not floored.keep[2:].any() and plain.scores[2:].min() > 0.3
    assert FilterConfig().min_similarity is None  # off by default: the paper's filter


def l2n(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_reid_ctf_single_identity_gallery():
    feats, pids, centres = clustered(n_ids=1, per_id=4)
    gallery = FaissGallery.build(feats, pids)
    res = ReIDCTF(None, gallery).score_features(near(centres, [0, 0]), np.array([10, 10]))
    assert np.all(res.scores == 1.0) and np.all(res.extras["best_other_sim"] == -1.0)
    assert np.all(res.extras["best_other_pid"] == -1)


def test_reid_ctf_scores_images_and_checks_input(person_images, untrained_model_dir):
    images, pids = person_images
    extract = model_extractor(untrained_model_dir, RuntimeConfig(device="cpu"))
    gallery = FaissGallery.build(extract(images), pids)
    flt = ReIDCTF(extract, gallery, threshold=0.4)
    assert isinstance(flt, ImageFilter)
    res = flt.score(images[:5], pids[:5])
    assert res.scores.dtype == np.float32 and res.scores.shape == (5,) and res.keep.dtype == bool
    assert np.all((res.scores >= 0) & (res.scores <= 1))
    # gallery images scored for their own pid match themselves (similarity 1)
    np.testing.assert_allclose(res.extras["own_sim"], 1.0, atol=1e-4)
    assert flt.score([], []).scores.shape == (0,)
    with pytest.raises(FilterError, match="3 images but 2 claimed"):
        flt.score(images[:3], pids[:2])
    with pytest.raises(FilterError, match=r"\[77\]"):
        flt.score(images[:1], [77])


# ------------------------------------------------------------------------------------------------ CCTF
def test_identity_classifier_fit_save_load(tmp_path):
    feats, pids, centres = clustered(n_ids=5, per_id=8, spread=0.3)
    clf = IdentityClassifier.fit(feats, pids, weight_decay=1e-3, steps=50)
    q = near(centres, np.arange(5), spread=0.3)
    probs = clf.predict_proba(q)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (clf.pids[probs.argmax(axis=1)] == (np.arange(5) + 1) * 10).mean() >= 0.8
    clf.save(tmp_path / "clf")
    loaded = IdentityClassifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(loaded.predict_proba(q), probs)
    assert loaded.meta["final_loss"] < np.log(5)
    with pytest.raises(FilterError, match="at least 2"):
        IdentityClassifier.fit(feats[:8], pids[:8])


def test_cctf_scores_claimed_probability(person_images, untrained_model_dir):
    images, pids = person_images
    extract = model_extractor(untrained_model_dir, RuntimeConfig(device="cpu"))
    feats = extract(images)
    clf = IdentityClassifier.fit(feats, pids, steps=30)
    flt = CCTF(extract, clf, threshold=0.5)
    res = flt.score(images, pids)
    np.testing.assert_allclose(res.scores, clf.predict_proba(feats)[np.arange(12), pids - 1], atol=1e-5)
    assert np.array_equal(res.keep, res.scores >= 0.5) and res.extras["top_pid"].shape == (12,)
    with pytest.raises(FilterError, match=r"\[4\]"):
        flt.score(images[:1], [4])


# ------------------------------------------------------------------------------------------------ CLIP
def test_tiny_clip_filter_plumbing(tiny_clip_dir, person_images):
    images, pids = person_images
    assert build_tiny_clip(tiny_clip_dir, seed=0) == tiny_clip_dir  # reused, not rebuilt
    flt = CLIPFilter(tiny_clip_dir, threshold=0.5, batch_size=5)
    res = flt.score(images, pids)
    assert res.scores.shape == (12,) and res.scores.dtype == np.float32
    assert np.all((res.scores > 0) & (res.scores < 1)) and np.array_equal(res.keep, res.scores >= 0.5)
    one_batch = CLIPFilter(tiny_clip_dir, batch_size=64).score(images, pids).scores
    np.testing.assert_allclose(res.scores, one_batch, atol=1e-5)  # batching does not change scores
    # one positive and one negative prompt: the score is a 2-way softmax, so swapping them gives 1 - score
    a = CLIPFilter(tiny_clip_dir, positive_prompts=["a photo of a person"], negative_prompts=["random noise"])
    b = CLIPFilter(tiny_clip_dir, positive_prompts=["random noise"], negative_prompts=["a photo of a person"])
    np.testing.assert_allclose(a.score(images[:3], pids[:3]).scores + b.score(images[:3], pids[:3]).scores,
                               1.0, atol=1e-5)
    with pytest.raises(FilterError, match="CLIPModel folder"):
        CLIPFilter(tiny_clip_dir / "nowhere")


# ---------------------------------------------------------------------------------- one call, all kept
def test_build_filters_and_score_all(tmp_path, person_images, untrained_model_dir, tiny_clip_dir):
    images, pids = person_images
    records = write_records(tmp_path / "src", images, pids)
    cfg = FilterConfig.load(None, ["filters=[reid_ctf, cctf, clip]", "cctf_steps=20"],
                            reid_model_dir=str(untrained_model_dir), clip_model_dir=str(tiny_clip_dir),
                            gallery_dir=str(tmp_path / "cache"))
    filters = build_filters(cfg, records, runtime=RuntimeConfig(device="cpu"))
    assert list(filters) == ["reid_ctf", "cctf", "clip"]
    noise = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8))
             for i in range(2)]
    batch, claimed = images[:3] + noise, [1, 2, 3, 1, 2]
    scores = score_all(filters, batch, claimed)
    for name in ("reid_ctf", "cctf", "clip"):
        assert scores[name].shape == (5,) and np.all((scores[name] >= 0) & (scores[name] <= 1))
        assert np.array_equal(scores[f"{name}_keep"], scores[name] >= 0.5)
    assert {"reid_ctf_margin", "reid_ctf_own_sim", "cctf_top_pid"} <= set(scores)
    assert np.array_equal(decide(scores, cfg), scores["reid_ctf"] >= cfg.threshold)
    stamp = (tmp_path / "cache" / "reid_gallery" / "index.faiss").stat().st_mtime_ns
    again = score_all(build_filters(cfg, records, runtime=RuntimeConfig(device="cpu")), batch, claimed)
    assert (tmp_path / "cache" / "reid_gallery" / "index.faiss").stat().st_mtime_ns == stamp  # reused
    for key in scores:
        np.testing.assert_allclose(again[key], scores[key], atol=1e-5)
    with pytest.raises(FilterError, match="clip_model_dir"):
        build_filters(cfg.model_copy(update={"clip_model_dir": None}), records, runtime=RuntimeConfig())
    with pytest.raises(FilterError, match="gallery_dir"):
        build_filters(cfg.model_copy(update={"gallery_dir": None}), records, runtime=RuntimeConfig())


def test_build_filters_extra_records_join_in_memory_only(tmp_path, person_images, untrained_model_dir,
                                                          tiny_clip_dir):
    """The service's case: a cached source gallery (pids 1, 2) + an uploaded identity's crops under a new pid."""
    from diffreid.data.types import ImageRecord
    from tests.conftest import _folder_snapshot

    images, pids = person_images
    records = write_records(tmp_path / "src", images, pids)
    source = [r for r in records if r.pid != 3]
    new_pid = max(r.pid for r in source) + 1 + 96  # above every source pid
    extras = [ImageRecord(r.path, new_pid, 0) for r in records if r.pid == 3]
    cfg = FilterConfig.load(None, ["filters=[reid_ctf, cctf, clip]", "cctf_steps=20"],
                            reid_model_dir=str(untrained_model_dir), clip_model_dir=str(tiny_clip_dir),
                            gallery_dir=str(tmp_path / "cache"))
    runtime = RuntimeConfig(device="cpu")
    plain = build_filters(cfg, source, runtime=runtime)
    cache = _folder_snapshot(tmp_path / "cache")
    assert {"reid_gallery/index.faiss", "cctf_classifier/classifier.json"} <= set(cache)

    extended = build_filters(cfg, source, runtime=runtime, extra_records=extras)
    assert _folder_snapshot(tmp_path / "cache") == cache  # nothing of the extras was written
    assert json.loads((tmp_path / "cache" / "reid_gallery" / "gallery.json").read_text())["count"] == len(source)
    gallery = extended["reid_ctf"].gallery
    assert gallery.size == len(source) + len(extras) and plain["reid_ctf"].gallery.size == len(source)
    assert gallery.meta["fingerprint"] != plain["reid_ctf"].gallery.meta["fingerprint"]

    # the extra identity's own crops find it first, and every filter scores the new pid
    own = [Image.open(r.path).convert("RGB") for r in extras]  # the files themselves: similarity 1
    extract = model_extractor(untrained_model_dir, runtime)
    assert np.all(gallery.search(extract(own), 1).pids[:, 0] == new_pid)
    scores = score_all(extended, own, [new_pid] * len(own))
    np.testing.assert_allclose(scores["reid_ctf_own_sim"], 1.0, atol=1e-4)
    assert np.all(scores["reid_ctf_best_other_pid"] != new_pid)
    assert new_pid in extended["cctf"].classifier.pids and new_pid not in plain["cctf"].classifier.pids
    assert extended["cctf"].classifier.meta["train_images"] == len(source) + len(extras)
    assert scores["clip"].shape == (len(own),)
    for name in ("reid_ctf", "cctf"):  # without the extras the new pid is unknown
        with pytest.raises(FilterError, match=str(new_pid)):
            plain[name].score(own[:1], [new_pid])
    again = build_filters(cfg, source, runtime=runtime)  # the cache still serves the plain source
    assert _folder_snapshot(tmp_path / "cache") == cache and again["reid_ctf"].gallery.size == len(source)


# ------------------------------------------------------------------ honest separation on the toy world
@pytest.fixture(scope="module")
def toy_world_filters(tmp_path_factory):
    """A 16-identity toy world, a ResNet-18 trained on it by the project's trainer (30 PK iterations), and
    Re-ID CTF + CCTF built from config over its training images."""
    from diffreid.data import load_dataset
    from diffreid.reid.train import ReIDTrainConfig, train_reid

    base = tmp_path_factory.mktemp("toy")
    world = ToyWorldConfig(ids_train=16, ids_test=2, cams=4, images_per_cam=(3, 6), height=H, width=W, seed=0)
    dataset = load_dataset("market_layout", render_world(world, base / "world"))
    train_cfg = ReIDTrainConfig(model=ReIDModelConfig(backbone="resnet18"), height=H, width=W, P=8, K=4,
                                epochs=3, iters_per_epoch=10, warmup_epochs=1, milestones=[100], lr=1e-3,
                                pad=4, num_workers=0)
    train_reid(train_cfg, dataset.train, out_dir=base / "reid", progress=False)
    cfg = FilterConfig.load(None, ["filters=[reid_ctf, cctf]"], reid_model_dir=str(base / "reid"),
                            gallery_dir=str(base / "cache"))
    return world, build_filters(cfg, dataset.train, runtime=train_cfg.runtime)


@pytest.mark.slow
def test_filters_separate_own_identity_from_others_and_noise(toy_world_filters):
    world, filters = toy_world_filters
    # held-out renders of the training identities (fresh frames, not in the gallery)
    rng = np.random.default_rng(123)
    cams = world_cameras(world)
    images, pids = [], []
    for ident, split in world_identities(world):
        if split == "train":
            for k in range(6):
                images.append(render_person(ident, cams[k % len(cams)], None, rng, H, W))
                pids.append(ident.pid)
    pids = np.array(pids)
    ids = np.unique(pids)
    wrong = ids[(np.searchsorted(ids, pids) + rng.integers(1, len(ids), size=len(pids))) % len(ids)]
    assert np.all(wrong != pids)
    noise = [Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)) for _ in pids[::2]]
    noise += [Image.new("RGB", (W, H), tuple(int(c) for c in rng.integers(0, 256, 3))) for _ in pids[1::2]]

    own, other, junk = (score_all(filters, imgs, claimed) for imgs, claimed in
                        ((images, pids), (images, wrong), (noise, pids)))
    report = {}
    for name in ("reid_ctf", "cctf"):
        report[name] = (auroc(own[name], other[name]), auroc(own[name], junk[name]))
        print(f"{name}: AUROC own-vs-other {report[name][0]:.3f}, own-vs-noise {report[name][1]:.3f}; "
              f"mean own {own[name].mean():.3f} other {other[name].mean():.3f} noise {junk[name].mean():.3f}; "
              f"kept own {own[name + '_keep'].mean():.2f} other {other[name + '_keep'].mean():.2f} "
              f"noise {junk[name + '_keep'].mean():.2f}")
        # measured 0.91 / 0.87 (Re-ID CTF) and 0.96 / 0.92 (CCTF); an untrained model gives ~0.56
        assert report[name][0] > 0.8, name
        assert report[name][1] > 0.75, name
        assert own[name].mean() > junk[name].mean() + 0.2 and own[name].mean() > other[name].mean() + 0.2
    assert own["reid_ctf_margin"].mean() > other["reid_ctf_margin"].mean()
