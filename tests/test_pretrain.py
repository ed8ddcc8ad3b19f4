"""Backbone pre-training: timm recipe in-process and on Ray Train (2 CPU workers, a real worker kill)."""
import json
import os
import signal
import threading
import time

import pytest
import torch

from diffreid.config import ConfigError
from diffreid.data import load_dataset
from diffreid.data.toyworld import ToyWorldConfig, render_world
from diffreid.reid.pretrain import PretrainConfig, pretrain_in_process

TINY = ["backbone=resnet18", "height=64", "width=32", "warmup_epochs=1", "batch_size=16", "loader_workers=0",
        "runtime.device=cpu", "randaugment=rand-m5-mstd0.5"]


@pytest.fixture(scope="module")
def toy_train(tmp_path_factory):
    root = render_world(ToyWorldConfig(ids_train=8, ids_test=2, cams=2, height=64, width=32, seed=3),
                        tmp_path_factory.mktemp("world"))
    return load_dataset("market_layout", root).train


def test_recipe_defaults_are_the_papers():
    cfg = PretrainConfig()
    assert (cfg.backbone, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.warmup_epochs) == \
        ("resnet50", 4e-3, 0.05, 512, 300, 20)
    assert cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0 and cfg.randaugment and cfg.reprob > 0
    with pytest.raises(ConfigError, match="ray.num_workers"):
        PretrainConfig.load(overrides=["batch_size=30", "ray.num_workers=4"])


def test_in_process_pretrain_resumes_and_exports_timm_weights(toy_train, tmp_path):
    import timm

    cfg = PretrainConfig.load(overrides=TINY + ["epochs=2"])
    pretrain_in_process(cfg, toy_train, tmp_path, progress=False)
    # a second call with more epochs resumes from epoch 2 instead of starting again
    cfg3 = PretrainConfig.load(overrides=TINY + ["epochs=3"])
    path = pretrain_in_process(cfg3, toy_train, tmp_path, progress=False)
    recipe = json.loads((tmp_path / "recipe.json").read_text())
    assert [h["epoch"] for h in recipe["history"]] == [1, 2, 3]
    assert recipe["history"][-1]["resumed_from_epoch"] == 2
    model = timm.create_model("resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=0)
    from safetensors.torch import load_file

    saved = load_file(path)
    assert not any(k.startswith("fc.") for k in saved)
    assert torch.equal(model.state_dict()["conv1.weight"], saved["conv1.weight"])
    assert model(torch.zeros(2, 3, 64, 32)).shape == (2, 512)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_two_workers_survive_a_killed_worker(toy_train, tmp_path, ray_client):
    from ray.util.state import list_actors

    from diffreid.distributed.train import pretrain_with_ray

    cfg = PretrainConfig.load(overrides=TINY + ["epochs=16", "ray.num_workers=2", "ray.max_failures=2",
                                                f"ray.storage_path={tmp_path / 'storage'}"])
    box = {}
    runner = threading.Thread(target=lambda: box.update(result=pretrain_with_ray(cfg, toy_train, tmp_path / "out")))
    runner.start()
    killed, first_seen = None, None
    deadline = time.time() + 240
    while time.time() < deadline and runner.is_alive():
        if first_seen is None and list((tmp_path / "storage").rglob("checkpoint_*/state.pt")):
            first_seen = time.time()
        # Ray Train's controller registers reported checkpoints when it polls the workers (every 2 s): wait
        # past two polls so the restarted group must resume from a registered checkpoint
        if first_seen is not None and time.time() - first_seen > 5:
            workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            if workers:
                killed = workers[0].pid
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.2)
    runner.join(timeout=420)
    assert killed is not None, "no checkpoint appeared before training ended; cannot test the kill"
    assert not runner.is_alive() and "result" in box
    recipe = json.loads((tmp_path / "out" / "recipe.json").read_text())
    history = recipe["history"]
    assert [h["epoch"] for h in history] == list(range(1, 17))  # every epoch once, none repeated from zero
    assert history[-1]["resumed_from_epoch"] >= 1  # the last epochs ran in the restarted worker group
    assert (tmp_path / "out" / "backbone.safetensors").stat().st_size > 1_000_000
