"""Identity adapters on the tiny pipeline: real peft/diffusers training steps on toy-world images (CPU)."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffreid.config import ConfigError
from diffreid.data.toyworld import render_identity_images, sample_identity
from diffreid.generation.adapters import (AdapterConfig, AdapterError, activate, deactivate, delete_adapter,
                                          load_identity_adapter, loaded_adapters, prior_preservation_loss,
                                          read_adapter_meta, timestep_weights, train_identity_adapter,
                                          train_shared_lora_ti, train_shared_lora_ti_per_image)
from diffreid.generation.sampler import SamplerConfig, sample_mixed
from diffreid.models import PipelineConfig, load_pipeline

ID_PROMPT, REF_PROMPT = "a photo of sks person", "a photo of person"


@pytest.fixture(scope="module")
def tiny_dir(tiny_pipeline_dir):
    torch.set_num_threads(1)
    return tiny_pipeline_dir


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    # this module's own loaded copy of the shared folder: the tests load, activate and delete adapters on it
    return load_pipeline(PipelineConfig(path=str(tiny_dir), runtime={"device": "cpu"}))


@pytest.fixture(scope="module")
def people():
    rng = np.random.default_rng(0)
    return [render_identity_images(sample_identity(rng, pid), 4, rng, 64, 32) for pid in range(3)]


def cfg(**fields):
    base = dict(height=64, width=32, instance_batch_size=2, prior_batch_size=2, runtime={"device": "cpu"})
    return AdapterConfig.load(**{**base, **fields})


def render(pipe, prompt=ID_PROMPT):
    return pipe(prompt, num_inference_steps=2, height=64, width=32, output_type="np",
                generator=torch.Generator().manual_seed(3)).images


def test_config_errors_name_the_field(pipe, people, tmp_path):
    with pytest.raises(ConfigError, match="height/width = 64x64.*2:1"):
        AdapterConfig.load(height=64, width=64)
    with pytest.raises(ConfigError, match="mode"):
        AdapterConfig.load(mode="hypernetwork")
    with pytest.raises(ConfigError, match="instance_batch_size"):
        AdapterConfig.load(instance_batch_size=0)
    with pytest.raises(ConfigError, match=r"width=34: must be divisible by 4"):
        train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, cfg(height=68, width=34, steps=1),
                               tmp_path / "a")
    with pytest.raises(ConfigError, match="prior_loss_weight > 0 needs attribute-reference images"):
        train_identity_adapter(pipe, people[0], ID_PROMPT, None, None, cfg(steps=1), tmp_path / "b")
    with pytest.raises(AdapterError, match="cannot read image"):
        train_identity_adapter(pipe, [tmp_path / "missing.png"], ID_PROMPT, None, None,
                               cfg(steps=1, prior_loss_weight=0), tmp_path / "c")
    assert AdapterConfig.load(mode="dreambooth").resolved_lr == 2e-6
    assert AdapterConfig.load().resolved_lr == 1e-4


def test_loss_is_eq1_and_lambda_reaches_the_gradient():
    g = torch.Generator().manual_seed(0)
    pred_i, tgt_i = torch.randn(2, 4, 8, 4, generator=g), torch.randn(2, 4, 8, 4, generator=g)
    pred_p, tgt_p = torch.randn(2, 4, 8, 4, generator=g), torch.randn(2, 4, 8, 4, generator=g)
    w = torch.ones(2)
    grads = []
    for lam in (0.0, 0.5):
        pi, pp = pred_i.clone().requires_grad_(), pred_p.clone().requires_grad_()
        total, parts = prior_preservation_loss(pi, tgt_i, pp, tgt_p, w, w, lam)
        assert total.item() == pytest.approx(parts["instance"] + lam * parts["prior"], rel=1e-6)
        assert parts["instance"] == pytest.approx(((pred_i - tgt_i) ** 2).mean().item(), rel=1e-6)
        total.backward()
        grads.append(pp.grad.clone())
        assert torch.allclose(pi.grad, 2 * (pred_i - tgt_i) / pred_i.numel())
    assert torch.count_nonzero(grads[0]) == 0 and torch.count_nonzero(grads[1]) > 0

    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([1, 500, 999])
    snr_w = timestep_weights(sched, t, "snr", 5.0)
    assert snr_w[0] < 1e-2 and snr_w[-1] == pytest.approx(1.0)  # low-noise steps are down-weighted
    assert torch.equal(timestep_weights(sched, t, "uniform"), torch.ones(3))


def test_lora_trains_saves_and_loads_in_a_stock_pipeline(pipe, people, tiny_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    before = render(pipe)
    result = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT,
                                    cfg(steps=32, lr=1e-2, checkpoint_every=100), tmp_path / "lora", "id0")
    assert result.steps == 32 and len(result.losses) == 32
    assert np.mean(result.losses[-8:]) < np.mean(result.losses[:8]) - 0.05
    logged = json.loads((tmp_path / "lora" / "losses.json").read_text())
    assert [e["step"] for e in logged] == list(range(1, 33)) and all(e["prior"] > 0 for e in logged)
    assert result.bytes == (tmp_path / "lora" / "pytorch_lora_weights.safetensors").stat().st_size
    assert np.array_equal(render(pipe), before), "training must leave the resident pipeline unchanged"
    assert not list(tmp_path.glob("lora/checkpoint-*"))

    stock = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    base = render(stock)
    stock.load_lora_weights(tmp_path / "lora", adapter_name="x")
    assert np.abs(render(stock) - base).max() > 1e-3
    stock.disable_lora()
    assert np.array_equal(render(stock), base)

    again = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT,
                                   cfg(steps=32, lr=1e-2, checkpoint_every=100), tmp_path / "lora", "id0")
    assert again.losses == result.losses and again.seconds == 0.0, "a finished run is not trained again"


def test_text_encoder_lora_is_loaded_and_switched_with_the_identity(pipe, people, tiny_dir, tmp_path):
    """A LoRA trained on UNet + text encoder: loaded into another pipeline, its text-encoder layers hold the
    trained weights (transformers' load report calls them missing; they are not), change the prompt's embedding
    while active and leave it as the base's when deactivated."""
    result = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT,
                                    cfg(steps=4, lr=1e-2, train_text_encoder=True, checkpoint_every=100),
                                    tmp_path / "te", "te")
    saved = load_file(result.dir / "pytorch_lora_weights.safetensors")
    saved_up = sorted(float(v.abs().sum()) for k, v in saved.items() if k.startswith("text_encoder.") and ".up." in k)
    assert saved_up and max(saved_up) > 0

    other = load_pipeline(PipelineConfig(path=str(tiny_dir), runtime={"device": "cpu"}))
    ids = other.tokenizer([ID_PROMPT], padding="max_length", max_length=other.tokenizer.model_max_length,
                          return_tensors="pt").input_ids

    def embedding():
        with torch.no_grad():
            return other.text_encoder(ids).last_hidden_state

    base = embedding()
    load_identity_adapter(other, result.dir, "te")
    activate(other, "te")
    loaded_up = sorted(float(v.abs().sum()) for k, v in other.text_encoder.state_dict().items()
                       if ".lora_B.te." in k)
    assert loaded_up == pytest.approx(saved_up, rel=1e-5)
    assert (embedding() - base).abs().max() > 1e-3
    deactivate(other)
    assert torch.equal(embedding(), base)


def test_prior_term_changes_the_update(pipe, people, tmp_path):
    weights, firsts = [], []
    for lam in (0.0, 1.0):
        r = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT,
                                   cfg(steps=1, lr=1e-2, prior_loss_weight=lam), tmp_path / f"l{lam}")
        firsts.append(json.loads((r.dir / "losses.json").read_text())[0])
        weights.append(load_file(r.dir / "pytorch_lora_weights.safetensors"))
    assert firsts[0]["instance"] == firsts[1]["instance"] and firsts[0]["prior"] == firsts[1]["prior"] > 0
    assert firsts[1]["loss"] == pytest.approx(firsts[1]["instance"] + firsts[1]["prior"], rel=1e-5)
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_continues_from_the_last_checkpoint(pipe, people, tmp_path):
    c = cfg(steps=6, lr=1e-2, checkpoint_every=3)
    straight = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, c, tmp_path / "a")

    def crash(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, c, tmp_path / "b", on_step=crash)
    assert (tmp_path / "b" / "checkpoint-0000003").is_dir() and not (tmp_path / "b" / "adapter.json").exists()
    seen = []
    resumed = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, c, tmp_path / "b",
                                     on_step=lambda s, _: seen.append(s))
    assert seen == [4, 5, 6], "a re-run continues, it does not restart"
    assert resumed.losses == straight.losses
    a, b = (load_file(d / "pytorch_lora_weights.safetensors") for d in (straight.dir, resumed.dir))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(AdapterError, match="another config"):
        train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, cfg(steps=6, lr=5e-3),
                               tmp_path / "b")


def test_dreambooth_trains_a_copy_saves_reloads_and_switches(pipe, people, tmp_path):
    before = render(pipe)
    db = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT,
                                cfg(mode="dreambooth", steps=2, lr=1e-3), tmp_path / "db")
    assert (db.dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert np.array_equal(render(pipe), before)
    lora = train_identity_adapter(pipe, people[1], ID_PROMPT, people[2], REF_PROMPT,
                                  cfg(steps=2, lr=1e-2), tmp_path / "lora")
    assert db.bytes > 10 * lora.bytes

    load_identity_adapter(pipe, db.dir, "db")
    load_identity_adapter(pipe, lora.dir, "lo")
    assert np.array_equal(render(pipe), before), "loading does not activate"
    activate(pipe, "db")
    out_db = render(pipe)
    activate(pipe, "lo")
    out_lo = render(pipe)
    assert np.abs(out_db - before).max() > 1e-4 and np.abs(out_lo - before).max() > 1e-4
    assert np.abs(out_db - out_lo).max() > 1e-4
    activate(pipe, "db")
    assert np.array_equal(render(pipe), out_db), "switching back is exact"
    deactivate(pipe)
    assert np.array_equal(render(pipe), before)
    activate(pipe, "lo")
    delete_adapter(pipe, "lo")
    delete_adapter(pipe, "db")
    assert loaded_adapters(pipe) == {} and not any(pipe.get_list_adapters().values())
    assert np.array_equal(render(pipe), before)
    with pytest.raises(AdapterError, match="not loaded"):
        activate(pipe, "lo")
    with pytest.raises(AdapterError, match="not an identity adapter folder"):
        load_identity_adapter(pipe, tmp_path, "nothing")


def test_dreambooth_stored_as_an_extracted_lora_reproduces_the_full_unet(pipe, people, tmp_path):
    """At full rank the SVD holds every weight delta: the extracted LoRA draws what the full DreamBooth UNet draws,
    up to the biases and norms a LoRA cannot hold; at rank 1 it keeps less and drifts further."""
    before = render(pipe)
    train = dict(mode="dreambooth", steps=3, lr=1e-3, prior_loss_weight=0)
    full = train_identity_adapter(pipe, people[0], ID_PROMPT, None, None, cfg(**train), tmp_path / "full")
    outs = {}
    for rank in (1, 512):
        lora = train_identity_adapter(pipe, people[0], ID_PROMPT, None, None,
                                      cfg(**train, dreambooth_store="lora", extract_rank=rank), tmp_path / f"r{rank}")
        meta = read_adapter_meta(lora.dir)
        assert meta["mode"] == "lora" and meta["extracted_from"] == "dreambooth" and lora.mode == "lora"
        assert (lora.dir / "pytorch_lora_weights.safetensors").is_file() and not (lora.dir / "unet").exists()
        outs[rank] = (meta["kept_energy"], lora)
    assert outs[512][0] > 0.999 > outs[1][0]
    assert outs[1][1].bytes < full.bytes / 5
    load_identity_adapter(pipe, full.dir, "full")
    for rank in (1, 512):
        load_identity_adapter(pipe, outs[rank][1].dir, f"r{rank}")
    activate(pipe, "full")
    want = render(pipe)
    errors = {}
    for rank in (1, 512):
        activate(pipe, f"r{rank}")
        errors[rank] = float(np.abs(render(pipe) - want).max())
    deactivate(pipe)
    for name in ("full", "r1", "r512"):
        delete_adapter(pipe, name)
    drift = float(np.abs(want - before).max())
    assert drift > 1e-3 and errors[512] < 0.2 * drift and errors[512] < errors[1], (drift, errors)


def test_shared_lora_ti_trains_many_ids_and_samples_a_mixed_batch(pipe, people, tmp_path):
    vocab_size = len(pipe.tokenizer)
    before = render(pipe)
    ids = {3: (people[0], "red shirt"), 12: (people[1], "blue shirt")}
    r = train_shared_lora_ti(pipe, ids, cfg(mode="shared_lora_ti", steps=3, lr=1e-2), tmp_path / "shared",
                             ref_images=people[2], ref_prompt=REF_PROMPT)
    assert r.tokens == {3: "<id-0003>", 12: "<id-0012>"}
    assert json.loads((r.dir / "tokens.json").read_text()) == {"<id-0003>": 3, "<id-0012>": 12}
    rows = load_file(r.dir / "token_embeddings.safetensors")
    assert set(rows) == {"<id-0003>", "<id-0012>"} and rows["<id-0003>"].shape == (32,)
    assert not torch.equal(rows["<id-0003>"], rows["<id-0012>"]), "each identity learned its own token"
    assert len(pipe.tokenizer) == vocab_size and np.array_equal(render(pipe), before)

    entry = load_identity_adapter(pipe, r.dir, "shared")
    assert entry.tokens == r.tokens and len(pipe.tokenizer) == vocab_size + 2
    s = SamplerConfig.load(num_images=2, steps=2, guidance=2.0, height=64, width=32, output_height=64,
                           output_width=32, batch_size=4, phrases_per_prompt=0)
    out = sample_mixed(pipe, [(pid, f"a photo of {tok} person") for pid, tok in r.tokens.items()], s,
                       adapter="shared")
    assert [g.record["pid"] for g in out] == [3, 12, 3, 12]
    assert len({tuple(g.record["batch"]["seeds"]) for g in out}) == 1, "one batch holds both identities"
    assert np.abs(np.asarray(out[0].image, float) - np.asarray(out[1].image, float)).max() > 0
    delete_adapter(pipe, "shared")
    assert len(pipe.tokenizer) == vocab_size and np.array_equal(render(pipe), before)


def test_shared_lora_ti_takes_one_prompt_per_image(pipe, people, tmp_path):
    c = cfg(mode="shared_lora_ti", steps=2, lr=1e-2, prior_loss_weight=0)
    images, pids = people[0][:2] + people[1][:2], [3, 3, 12, 12]
    prompts = [f"a {m} photo of {c.token(pid)} person" for m, pid in zip(["visible", "infrared"] * 2, pids)]
    with pytest.raises(AdapterError, match="3 prompts for 4 images"):
        train_shared_lora_ti_per_image(pipe, images, prompts[:3], pids, c, tmp_path / "x")
    with pytest.raises(AdapterError, match="3 pids for 4 images"):
        train_shared_lora_ti_per_image(pipe, images, prompts, pids[:3], c, tmp_path / "x")
    with pytest.raises(AdapterError, match="lacks '<id-0012>'"):
        train_shared_lora_ti_per_image(pipe, images, prompts[:2] + prompts[:2], pids, c, tmp_path / "x")
    with pytest.raises(ConfigError, match="needs mode=shared_lora_ti"):
        train_shared_lora_ti_per_image(pipe, images, prompts, pids, cfg(steps=2), tmp_path / "x")

    r = train_shared_lora_ti_per_image(pipe, images, prompts, pids, c, tmp_path / "per_image", adapter_name="vi")
    assert r.tokens == {3: "<id-0003>", 12: "<id-0012>"} and len(r.losses) == 2
    assert read_adapter_meta(r.dir)["prompts"]["instance"] == sorted(prompts)

    # the per-identity API is the same run: one template prompt per image, same fingerprint
    by_id = train_shared_lora_ti(pipe, {3: (images[:2], "red"), 12: (images[2:], "blue")}, c, tmp_path / "by_id")
    flat = [f"a photo of {c.token(pid)} person, {cap}" for pid, cap in zip(pids, ["red", "red", "blue", "blue"])]
    again = train_shared_lora_ti_per_image(pipe, images, flat, pids, c, tmp_path / "by_id")
    assert again.seconds == 0.0 and again.losses == by_id.losses and again.tokens == by_id.tokens


def test_8bit_adam_trains_resumes_and_stores_its_moments_in_8_bits(pipe, people, tmp_path):
    # rank 64 on the tiny UNet's 64-wide projections: 4,096-element matrices, bitsandbytes' 8-bit threshold
    c = cfg(steps=4, lr=1e-2, checkpoint_every=2, optimizer="adamw8bit", rank=64, alpha=64)
    straight = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, c, tmp_path / "a")
    assert all(math.isfinite(v) for v in straight.losses)

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, c, tmp_path / "b", on_step=crash)
    moments = torch.load(tmp_path / "b" / "checkpoint-0000002" / "optimizer.pt", weights_only=True)["optimizer"]

    def dtypes(tree):
        if isinstance(tree, torch.Tensor):
            return {tree.dtype}
        return set().union(*map(dtypes, tree.values())) if isinstance(tree, dict) else set()

    assert torch.uint8 in dtypes(moments["state"]), "bitsandbytes stores the moments as uint8 codes"
    resumed = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT, c, tmp_path / "b")
    assert resumed.losses == straight.losses, "the 8-bit moments survive a checkpoint"
    plain = train_identity_adapter(pipe, people[0], ID_PROMPT, people[1], REF_PROMPT,
                                   cfg(steps=4, lr=1e-2, rank=64, alpha=64), tmp_path / "c")
    assert plain.losses != straight.losses, "adamw8bit is a different optimiser, not a renamed adamw"
