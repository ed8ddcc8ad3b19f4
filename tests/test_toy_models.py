"""The shipped toy models (base text-to-image pipeline, pixel captioner) and the script that trains them."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffreid.config import ConfigError
from diffreid.data.toyworld import ToyWorldConfig, describe, render_identity_images, sample_identity, world_identities
from diffreid.generation.prompts import LPEConfig, build_captioner
from diffreid.generation.toy_captioner import ToyCaptioner, caption_from_attributes
from diffreid.models.assets import ASSETS, resolve_model_path
from diffreid.models.pipeline import PipelineConfig, PipelineLoadError, load_pipeline

REPO = Path(__file__).resolve().parents[1]


def test_shipped_models_are_small_safetensors():
    files = [p for p in ASSETS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert Path(resolve_model_path("diffreid:toy-base")).joinpath("model_index.json").is_file()
    with pytest.raises(FileNotFoundError, match="diffreid:toy-base"):
        resolve_model_path("diffreid:nope")
    assert resolve_model_path("org/model") == "org/model"
    with pytest.raises(PipelineLoadError, match="diffreid ships"):
        load_pipeline(PipelineConfig(path="diffreid:nope"))


def test_toy_captioner_reads_clothing_of_unseen_identities():
    """Evaluation identities (pids 1..60 of the default world) were never in the captioner's pool."""
    cap = build_captioner(LPEConfig(captioner="toy"))
    assert isinstance(cap, ToyCaptioner)
    people = [ident for ident, _ in world_identities(ToyWorldConfig(ids_train=60, ids_test=1))][:60]
    images, truth = [], []
    for ident in people:
        images += render_identity_images(ident, 2, np.random.default_rng(ident.pid), 128, 64)  # 128x64: resized
        truth += [ident, ident]
    preds = cap.predict(images)
    upper = np.mean([p["upper_colour"] == t.upper_colour for p, t in zip(preds, truth)])
    lower = np.mean([p["lower_colour"] == t.lower_colour for p, t in zip(preds, truth)])
    assert upper > 0.6 and lower > 0.6, (upper, lower)  # chance is ~1/12 per colour
    captions = cap.caption(images[:2])
    assert all(c.startswith("a person with") and "seen from" not in c for c in captions)


def test_caption_from_attributes_matches_describe():
    ident = sample_identity(np.random.default_rng(3), 7)
    attrs = {k: getattr(ident, k) for k in ("upper_colour", "upper_pattern", "sleeve", "lower_colour", "lower_type",
                                            "shoes_colour", "bag_type", "bag_colour", "hair_colour", "hair_length")}
    assert caption_from_attributes({**attrs, "view": "back"}) == describe(ident, "back")


def test_toy_base_follows_the_prompted_shirt_colour():
    """Same seeds, different prompted shirt colours: the predicted shirt colour follows the prompt far more
    often than it matches a colour that was not asked for."""
    import torch

    pipe = load_pipeline(PipelineConfig(path="diffreid:toy-base"))
    cap = ToyCaptioner(resolve_model_path("diffreid:toy-captioner"))
    colours = ("red", "yellow", "blue", "white")
    predicted = {}
    for colour in colours:
        prompt = f"a photo of person, a person with short black hair wearing a {colour} shirt, black trousers"
        images = pipe([prompt] * 6, num_inference_steps=20, guidance_scale=7.0, height=64, width=32,
                      generator=[torch.Generator().manual_seed(k) for k in range(6)]).images
        assert images[0].size == (32, 64)
        predicted[colour] = [p["upper_colour"] for p in cap.predict(images)]
    asked = np.mean([p == c for c in colours for p in predicted[c]])
    not_asked = np.mean([p == other for c in colours for other in colours if other != c for p in predicted[c]])
    assert asked >= 0.25 and asked >= 3 * not_asked, (asked, not_asked, predicted)


def test_toy_captioner_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="config.json and model.safetensors"):
        ToyCaptioner(tmp_path)
    with pytest.raises(ConfigError, match="lpe.model_path"):
        build_captioner(LPEConfig(captioner="toy", model_path="diffreid:missing"))


@pytest.mark.slow
def test_train_toy_base_script_writes_loadable_models_and_resumes(tmp_path):
    out, work = tmp_path / "assets", tmp_path / "work"
    common = [sys.executable, "-m", "ray_jobs.train_toy_base", "--out", str(out), "--work", str(work),
              "--set", "base.pool.ids=6", "--set", "base.pool.images_per_id=4", "--set", "base.vae_steps=2",
              "--set", "base.unet_pool.ids=6", "--set", "base.unet_pool.images_per_id=4",
              "--set", "base.unet_batch=4", "--set", "base.vae_batch=4",
              "--set", "base.checkpoint_every=2", "--set", "base.sample_every=1", "--set", "captioner.steps=2",
              "--set", "captioner.batch=8", "--set", "base.threads=1",
              "--set", "base.refine.steps=2", "--set", "base.refine.pool.ids=6",
              "--set", "base.refine.pool.images_per_id=4", "--set", "base.eval.per_prompt=1",
              "--set", "base.eval.steps=1", "--set", "base.person_weight=2"]
    done = subprocess.run(common + ["--set", "base.unet_steps=2"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    pipe = load_pipeline(PipelineConfig(path=str(out / "toy-base")))
    assert pipe.unet.config.sample_size == [32, 16] or tuple(pipe.unet.config.sample_size) == (32, 16)
    assert (out / "toy-captioner" / "model.safetensors").is_file()
    assert (out / "toy-base" / "samples.png").is_file()
    log = [json.loads(line) for line in (work / "base" / "log.jsonl").read_text().splitlines()]
    assert {"vae", "unet", "refine"} <= {row["stage"] for row in log}
    checks = [row for row in log if row["stage"] == "eval"]  # prompt following measured while training
    assert checks and all(row["images"] == 24 and 0 <= row["upper_colour"] <= 1 for row in checks)
    evaluation = json.loads((out / "toy-base" / "diffreid_toy_base_eval.json").read_text())
    assert evaluation["images"] == 6 and 0 <= evaluation["upper_colour"] <= 1
    # a longer run continues from the step-2 checkpoint instead of starting again
    done = subprocess.run(common + ["--part", "base", "--set", "base.unet_steps=4"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    unet_steps = [row["step"] for row in (json.loads(x) for x in (work / "base" / "log.jsonl").read_text().splitlines())
                  if row["stage"] == "unet"]
    assert unet_steps.count(0) == 1, "the resumed run did not repeat step 0"
    refine_steps = [row["step"] for row in (json.loads(x) for x in (work / "base" / "log.jsonl").read_text().splitlines())
                    if row["stage"] == "refine"]
    assert refine_steps.count(0) == 2, "refine started from new first-phase weights, so it must start again"
    # init_from: only the refine phase, from a finished folder
    done = subprocess.run(common + ["--part", "base", "--work", str(tmp_path / "work2"), "--out", str(tmp_path / "a2"),
                                    "--set", f"base.init_from={out / 'toy-base'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    stages = {json.loads(x)["stage"] for x in (tmp_path / "work2" / "base" / "log.jsonl").read_text().splitlines()}
    assert stages == {"refine"}
    assert load_pipeline(PipelineConfig(path=str(tmp_path / "a2" / "toy-base"))).unet is not None


def test_a_checkpoint_of_another_recipe_is_not_resumed():
    from diffreid.toy.base import ToyBaseConfig, ToyPoolConfig, recipe_fingerprint

    base = ToyBaseConfig()
    assert recipe_fingerprint(base) == recipe_fingerprint(base.model_copy(update={"unet_steps": 5000}))
    for change in ({"unet_lr": 1e-3}, {"text_layers": 4}, {"unet_pool": ToyPoolConfig(uniform_colours=True)},
                   {"train_text_encoder": False}, {"person_weight": 4.0}, {"lower_weight": 2.0},
                   {"vae_from": "diffreid:toy-base"}, {"text_time_embedding": True}):
        assert recipe_fingerprint(base) != recipe_fingerprint(base.model_copy(update=change)), change


def test_person_weights_and_a_reused_vae(tmp_path):
    import torch

    from diffreid.toy.base import (ToyBaseConfig, ToyPoolConfig, latent_weights, lower_half, render_pool,
                                   train_toy_base)

    pool = ToyPoolConfig(ids=4, images_per_id=3)
    images, owners, views, masks = render_pool(pool, progress=False, with_masks=True)
    assert np.array_equal(images, render_pool(pool, progress=False)[0])
    weights = latent_weights(masks, 2, 4.0)
    assert weights.shape == (12, 1, 32, 16)
    assert float(weights.min()) == 1.0 and float(weights.max()) == 5.0, "1 off the person, 1 + 4 on it"
    share = masks.reshape(12, 32, 2, 16, 2).mean(axis=(2, 4))
    assert torch.allclose(weights[:, 0], torch.from_numpy(1 + 4 * share).float())
    lower = lower_half(masks)
    assert not (lower & ~masks).any() and lower.any(axis=(1, 2)).all()
    for person, legs in zip(masks, lower):
        rows = np.flatnonzero(person.any(axis=1))
        assert not legs[:(rows[0] + rows[-1] + 1) // 2].any() and legs[rows[-1]].any(), "legs: the lower half only"
    lower_share = lower.reshape(12, 32, 2, 16, 2).mean(axis=(2, 4))
    assert torch.allclose(latent_weights(masks, 2, 4.0, 3.0)[:, 0],
                          torch.from_numpy(1 + 4 * share + 3 * lower_share).float())
    cfg = ToyBaseConfig(pool=pool, vae_from="diffreid:toy-base", person_weight=4.0, unet_steps=2, unet_batch=2,
                        threads=1, eval={"per_prompt": 1, "steps": 1}, text_time_embedding=True)
    out = train_toy_base(cfg, tmp_path / "base", tmp_path / "work")
    stages = {json.loads(x)["stage"] for x in (tmp_path / "work" / "log.jsonl").read_text().splitlines()}
    assert stages == {"unet"}, "the VAE is reused, not trained"
    unet = load_pipeline(PipelineConfig(path=str(tmp_path / "base"))).unet
    assert unet.config.addition_embed_type == "text" and unet.add_embedding is not None, "pooled caption embedding"
    assert out["scaling_factor"] == pytest.approx(json.loads(
        (REPO / "diffreid/assets/toy-base/vae/config.json").read_text())["scaling_factor"])
    with pytest.raises(FileNotFoundError, match="vae_from="):
        train_toy_base(cfg.model_copy(update={"vae_from": str(tmp_path)}), tmp_path / "b2", tmp_path / "w2")


def test_every_caption_word_is_one_token(tmp_path):
    """Colour and garment words must reach the text encoder whole: a merge added for one word ("l o" of
    "long") once split others ("yellow" -> "yel lo w", "orange", "trousers")."""
    from diffreid.models.tiny import build_tokenizer
    from diffreid.toy.base import caption_words

    words = caption_words()
    tok = build_tokenizer(tmp_path / "tok", words=words)
    assert {w: tok.tokenize(w) for w in words if tok.tokenize(w) != [f"{w}</w>"]} == {}
    assert tok.tokenize("yellow trousers") == ["yellow</w>", "trousers</w>"]
    from transformers import CLIPTokenizer

    shipped = CLIPTokenizer.from_pretrained(Path(resolve_model_path("diffreid:toy-base")) / "tokenizer")
    assert {w: shipped.tokenize(w) for w in words if shipped.tokenize(w) != [f"{w}</w>"]} == {}, \
        "the shipped base was trained with a tokenizer that splits caption words"
