"""Re-ID model, PK sampler, features and the BoT trainer, on real toy-world images and real metrics."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffreid.cli import main
from diffreid.config import ConfigError
from diffreid.data import DatasetError, load_dataset
from diffreid.data.toyworld import ToyWorldConfig, render_world
from diffreid.reid.features import extract_features
from diffreid.reid.model import ReIDModelConfig, build_reid_model, load_reid_model, save_reid_model
from diffreid.reid.sampler import PKSampler
from diffreid.reid.transforms import VisibleToInfrared
from diffreid.reid.train import (ReIDTrainConfig, batch_hard_triplet_loss, evaluate_reid, lr_factor,
                                 train_reid)

TOY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "toy-reid.yaml"

torch.set_num_threads(2)


def tiny_cfg(*overrides: str) -> ReIDTrainConfig:
    return ReIDTrainConfig.load(TOY_CONFIG, overrides=["P=4", "K=4", "epochs=1", "iters_per_epoch=2",
                                                       "warmup_epochs=0", *overrides])


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    cfg = ToyWorldConfig(ids_train=8, ids_test=6, cams=4, height=64, width=32, seed=3)
    return render_world(cfg, tmp_path_factory.mktemp("world") / "toy", progress=False)


@pytest.fixture(scope="module")
def small_dataset(small_world):
    return load_dataset("market_layout", small_world)


# ---------------------------------------------------------------------------------------------- sampler
def test_pk_sampler_gives_p_ids_with_k_images_each():
    pids = [7] * 1 + [3] * 2 + [5] * 9 + [9] * 4 + [2] * 6 + [4] * 5  # id 7 and 3 have fewer than K images
    sampler = PKSampler(pids, p=3, k=3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(pids) // 9
    for batch in batches:
        assert len(batch) == 9
        counts = Counter(pids[i] for i in batch)
        assert len(counts) == 3 and set(counts.values()) == {3}
        for pid in counts:
            chunk = [i for i in batch if pids[i] == pid]
            if pids.count(pid) >= 3:
                assert len(set(chunk)) == 3, "an identity with K images or more is sampled without replacement"
    assert list(PKSampler(pids, p=3, k=3, seed=1)) == batches, "same seed and epoch -> same batches"
    sampler.set_epoch(1)
    assert list(sampler) != batches, "a new epoch reshuffles"
    # identities are visited in cycles: within an epoch visit counts differ by at most one
    many = [pid for pid in range(10) for _ in range(12)]
    visits = Counter(pid for batch in PKSampler(many, p=4, k=2, seed=0) for pid in {many[i] for i in batch})
    assert sum(visits.values()) == 4 * len(many) // 8 and max(visits.values()) - min(visits.values()) <= 1
    with pytest.raises(ValueError, match="P=7"):
        PKSampler(pids, p=7, k=2)


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, field", [("model.pool=max", "model.pool"), ("lr=-1", "lr"),
                                             ("epochz=3", "epochz"), ("P=1", "P"),
                                             ("milestones=[9,3]", "milestones")])
def test_bad_config_field_is_named(override, field):
    with pytest.raises(ConfigError, match=field):
        ReIDTrainConfig.load(TOY_CONFIG, overrides=[override])


def test_toy_config_and_lr_schedule():
    cfg = ReIDTrainConfig.load(TOY_CONFIG)
    assert cfg.model.backbone == "resnet18" and (cfg.height, cfg.width) == (64, 32)
    bot = ReIDTrainConfig()
    assert lr_factor(bot, 0) == pytest.approx(0.01) and lr_factor(bot, 5) == pytest.approx(0.505)
    assert [lr_factor(bot, e) for e in (10, 39.9, 40, 70)] == pytest.approx([1, 1, 0.1, 0.01])
    cos = ReIDTrainConfig(scheduler="cosine", warmup_epochs=0, epochs=10)
    assert [lr_factor(cos, e) for e in (0, 5, 10)] == pytest.approx([1, 0.5, 0])


def test_too_few_identities_for_p_is_a_config_error(small_dataset):
    with pytest.raises(ConfigError, match="P=16"):
        train_reid(tiny_cfg("P=16"), small_dataset.train, progress=False)


# ---------------------------------------------------------------------------------------------- model
def test_batch_hard_triplet_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 5, generator=gen)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    dist = torch.cdist(feats, feats)
    expected = []
    for a in range(8):
        pos = max(dist[a, p] for p in range(8) if labels[p] == labels[a])
        neg = min(dist[a, n] for n in range(8) if labels[n] != labels[a])
        expected.append(max(0.0, float(pos - neg + 0.3)))
    got = batch_hard_triplet_loss(feats, labels, margin=0.3)
    assert float(got) == pytest.approx(np.mean(expected), abs=1e-5)
    soft = batch_hard_triplet_loss(feats, labels, margin=0.3, soft_margin=True)
    assert float(soft) > 0 and float(soft) != pytest.approx(float(got))


def test_vi_tricks_balanced_pk_cross_modality_triplet_and_visible_to_infrared():
    pids = [1] * 6 + [1] * 2 + [2] * 5 + [2] * 5 + [3] * 7  # id 3 has visible images only
    groups = [0] * 6 + [1] * 2 + [0] * 5 + [1] * 5 + [0] * 7
    for batch in PKSampler(pids, p=3, k=4, seed=0, groups=groups):
        for pid in (1, 2):
            mods = Counter(groups[i] for i in batch if pids[i] == pid)
            assert mods == {0: 2, 1: 2}, f"identity {pid}: K=4 split 2 visible + 2 infrared, got {mods}"
        assert {groups[i] for i in batch if pids[i] == 3} == {0}

    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(8, 5, generator=gen)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    mods = torch.tensor([0, 0, 1, 0, 1, 1, 0, 0])  # identity 2 has no infrared image: its anchors are skipped
    dist = torch.cdist(feats, feats)
    expected = []
    for a in range(8):
        pos = [dist[a, p] for p in range(8) if labels[p] == labels[a] and mods[p] != mods[a]]
        neg = [dist[a, n] for n in range(8) if labels[n] != labels[a] and mods[n] != mods[a]]
        if pos and neg:
            expected.append(max(0.0, float(max(pos) - min(neg) + 0.3)))
    assert len(expected) == 6
    got = batch_hard_triplet_loss(feats, labels, margin=0.3, groups=mods)
    assert float(got) == pytest.approx(np.mean(expected), abs=1e-5)
    assert float(got) != pytest.approx(float(batch_hard_triplet_loss(feats, labels, margin=0.3)))

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(16, 8, 3), dtype=np.uint8))
    grey = np.asarray(VisibleToInfrared(grey_prob=1.0)(img))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    one = np.asarray(VisibleToInfrared(channel_prob=1.0)(img))
    assert any((one[..., 0] == np.asarray(img)[..., c]).all() for c in range(3))
    assert (one[..., 0] == one[..., 2]).all()
    assert VisibleToInfrared()(img) is img


def test_train_reid_with_vi_tricks_on_both_modalities(tmp_path):
    world = render_world(ToyWorldConfig(layout="sysu", ir_cams=[3, 6], ids_train=6, ids_val=1, ids_test=2,
                                        images_per_cam=(2, 3), height=64, width=32, seed=5), tmp_path / "vi",
                         progress=False)
    train = load_dataset("sysu_mm01", world).train
    assert {r.modality for r in train} == {"rgb", "ir"}
    cfg = tiny_cfg("modality_balanced=true", "visible_grey_prob=0.5", "visible_channel_prob=0.5",
                   "cross_modality_triplet_weight=1.0")
    result = train_reid(cfg, train, progress=False)
    assert len(result.history) == 1 and result.history[0]["cross_modality_loss"] > 0
    assert np.isfinite(result.history[0]["loss"])


def test_model_heads_last_stride_and_token_backbones():
    x = torch.randn(2, 3, 64, 32)
    model = build_reid_model(ReIDModelConfig(backbone="resnet18", pool="gem"), num_classes=5)
    plain = build_reid_model(ReIDModelConfig(backbone="resnet18", last_stride_1=False), num_classes=5)
    assert model.backbone.forward_features(x).shape[-2:] == (4, 2)
    assert plain.backbone.forward_features(x).shape[-2:] == (2, 1)
    logits, feat = model.train()(x)
    assert logits.shape == (2, 5) and feat.shape == (2, 512)
    assert model.classifier.bias is None and not model.bnneck.bias.requires_grad
    assert model.eval()(x).shape == (2, 512)
    with pytest.warns(UserWarning, match="last_stride_1"):
        vit = build_reid_model(ReIDModelConfig(backbone="test_vit"), num_classes=3)
    assert vit.eval()(x[:, :, :32, :32]).shape == (2, vit.feat_dim)
    with pytest.raises(ConfigError, match="model.backbone"):
        build_reid_model(ReIDModelConfig(backbone="no_such_net"), num_classes=3)


def test_backbone_init_from_timm_file_and_state(tmp_path):
    from safetensors.torch import save_file

    src = build_reid_model(ReIDModelConfig(backbone="resnet18"), num_classes=4)
    file = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in src.backbone.state_dict().items()}, str(file))
    from_file = build_reid_model(ReIDModelConfig(backbone="resnet18", pretrained_file=str(file)), num_classes=4)
    fresh = build_reid_model(ReIDModelConfig(backbone="resnet18"), num_classes=4)
    fresh.load_backbone_state(src.state_dict())  # "backbone."-prefixed keys of a whole ReIDModel
    for model in (from_file, fresh):
        for k, v in src.backbone.state_dict().items():
            assert torch.equal(model.backbone.state_dict()[k], v), k
    with pytest.raises(ValueError, match="does not fit"):
        fresh.load_backbone_state({"conv1.weight": torch.zeros(1)} | {"bogus": torch.zeros(1)})
    with pytest.raises(ConfigError, match="pretrained_file"):
        build_reid_model(ReIDModelConfig(backbone="resnet18", pretrained_file=str(tmp_path / "x.pt")), 4)


TINY_SWIN = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4}


def test_swin_at_a_2_to_1_input_through_pretrain_finetune_and_filter_loading(tmp_path):
    """Swin (paper Table 9) at a 2:1 person input through timm's img_size: the pre-training model, its exported
    backbone as a fine-tuning init, and the saved Re-ID model the filter loads give the same features."""
    from diffreid.reid.pretrain import PretrainConfig, build_model, export_backbone

    x = torch.randn(3, 3, 64, 32)
    # pre-training: the classification model at height x width, exported as a timm backbone file
    pre_cfg = PretrainConfig(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=TINY_SWIN, height=64,
                             width=32, batch_size=4)
    pre = build_model(pre_cfg, num_classes=5)
    assert pre.patch_embed.img_size == (64, 32) and pre(x).shape == (3, 5)
    torch.save({"model": pre.state_dict(), "num_classes": 5, "epoch": 1, "history": "[]"}, tmp_path / "state.pt")
    file = export_backbone(pre_cfg, tmp_path / "state.pt", tmp_path / "pre")
    recipe = json.loads((tmp_path / "pre" / "recipe.json").read_text())
    assert "img_size=(64, 32)" in recipe["load_with"] and "window_size=4" in recipe["load_with"]
    # fine-tuning: the Re-ID model starts from that file at the same 2:1 size
    cfg = ReIDModelConfig(backbone="swin_tiny_patch4_window7_224", backbone_kwargs=TINY_SWIN,
                          pretrained_file=str(file), last_stride_1=False)
    model = build_reid_model(cfg, num_classes=4, input_size=(64, 32))
    for k, v in pre.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(model.backbone.state_dict()[k], v), k
    logits, feat = model.train()(x)
    assert logits.shape == (3, 4) and feat.shape == (3, model.feat_dim) == (3, 32)
    model.eval()
    with torch.no_grad():
        before = model(x)
    assert torch.isfinite(before).all()
    # the filter's Re-ID model: save_reid_model -> load_reid_model rebuilds the Swin at the recorded size
    save_reid_model(model, cfg, tmp_path / "reid")
    loaded = load_reid_model(tmp_path / "reid")
    assert loaded.input_size == (64, 32) and loaded.cfg.backbone_kwargs == TINY_SWIN
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before, rtol=0, atol=0)
    # without the 2:1 size the same backbone is built for timm's square default and refuses the person crop
    with pytest.raises(AssertionError, match="Input height \\(64\\) doesn't match model \\(224\\)"):
        build_reid_model(cfg.model_copy(update={"pretrained_file": None}), num_classes=4).eval()(x)
    with pytest.raises(ConfigError, match="img_size"):
        ReIDModelConfig.validated({"backbone_kwargs": {"img_size": 64}}, "test")


# ---------------------------------------------------------------------------------------------- features
def test_extract_features_accepts_pil_paths_and_records(small_dataset):
    model = build_reid_model(ReIDModelConfig(backbone="resnet18"), num_classes=3)
    records = small_dataset.query[:5]
    by_record = extract_features(model, records, batch_size=2, height=64, width=32)
    by_path = extract_features(model, [Path(r.path) for r in records], height=64, width=32)
    by_pil = extract_features(model, [Image.open(r.path) for r in records], height=64, width=32)
    assert by_record.dtype == np.float32 and by_record.shape == (5, 512)
    np.testing.assert_allclose(np.linalg.norm(by_record, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(by_record, by_path, atol=1e-6)
    np.testing.assert_allclose(by_record, by_pil, atol=1e-6)
    flipped = extract_features(model, records, height=64, width=32, flip=True)
    assert not np.allclose(flipped, by_record)
    assert extract_features(model, [], height=64, width=32).shape == (0, 512)
    with pytest.raises(DatasetError, match="missing.jpg"):
        extract_features(model, ["missing.jpg"], height=64, width=32)
    with pytest.raises(ValueError, match="height and width"):
        extract_features(model, records)


def test_train_save_load_roundtrip_gives_identical_features(small_dataset, tmp_path):
    cfg = tiny_cfg()
    epochs_seen = []
    result = train_reid(cfg, small_dataset.train, out_dir=tmp_path / "run", progress=False,
                        on_epoch_end=lambda metrics, model: epochs_seen.append(metrics["epoch"]))
    assert epochs_seen == [1] and len(result.history) == 1
    assert np.isfinite(result.history[0]["loss"]) and result.history[0]["loss"] > 0
    assert result.label_pids == sorted({r.pid for r in small_dataset.train})
    for name in ("model.safetensors", "reid_model.json", "train_config.yaml", "history.json"):
        assert (tmp_path / "run" / name).is_file(), name
    loaded = load_reid_model(tmp_path / "run")
    assert loaded.input_size == (64, 32) and loaded.label_pids == result.label_pids
    images = small_dataset.gallery[:6]
    np.testing.assert_array_equal(extract_features(result.model, images), extract_features(loaded, images))
    assert ReIDTrainConfig.load(tmp_path / "run" / "train_config.yaml") == cfg
    # save_reid_model also takes a bare model config and records the model's own input size
    save_reid_model(loaded, loaded.cfg, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "reid_model.json").read_text())["input_size"] == [64, 32]
    with pytest.raises(FileNotFoundError, match="reid_model.json"):
        load_reid_model(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_train_writes_model_and_metrics(small_world, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--data", str(small_world), "--out", str(out), "--config", str(TOY_CONFIG),
               "--set", "P=4", "--set", "epochs=1", "--set", "iters_per_epoch=2", "--baseline", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "mAP" in printed and "before training" in printed
    for name in ("model.safetensors", "reid_model.json", "train_config.yaml", "history.json", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())["results"]
    assert len(metrics) == 2 and all(0 <= m["mAP"] <= 1 for m in metrics.values())
    assert load_reid_model(out).label_pids is not None


def test_cli_train_bad_field_is_one_line(small_world, tmp_path, capsys):
    rc = main(["train", "--data", str(small_world), "--out", str(tmp_path / "x"), "--set", "model.pool=max"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.pool" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_training_beats_random_init_on_the_toy_world(tmp_path):
    world = render_world(ToyWorldConfig(ids_train=24, ids_test=16, cams=4, height=64, width=32, seed=0),
                         tmp_path / "world", progress=False)
    dataset = load_dataset("market_layout", world)
    cfg = ReIDTrainConfig.load(TOY_CONFIG)
    torch.manual_seed(cfg.runtime.seed)
    num_ids = len({r.pid for r in dataset.train})
    before = evaluate_reid(build_reid_model(cfg.model, num_ids), dataset, cfg)
    result = train_reid(cfg, dataset.train, progress=False)
    after = evaluate_reid(result.model, dataset, cfg)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert after["mAP"] > before["mAP"] + 0.15, (before, after)
    assert after["Rank-1"] > before["Rank-1"] + 0.2, (before, after)
