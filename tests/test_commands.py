"""Every stage command end to end as a user runs it (tiny settings), generated from one registry; and
`diffreid check` on every shipped config."""
from pathlib import Path

import pytest
import yaml

from diffreid.cli import main
from diffreid.stages import STAGES, check_config, recognise

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "diffreid" / "configs").glob("*.yaml"))
BUILD_FAST = ["adapter.steps=2", "adapter.checkpoint_every=2", "refset.num_images=2", "refset.steps=1",
              "sampler.num_images=4", "sampler.steps=1", "filter_reid.epochs=1", "filter_reid.P=2",
              "filter_reid.K=2", "fidelity.reader.epochs=1", "fidelity.reader.iters_per_epoch=1",
              "filter.threshold=0", "sources=[{name: toy, toyworld: {ids_train: 3, ids_test: 2, cams: 3, height: 64, "
              "width: 32}, max_identities: 2, min_images: 2}]"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_checks(path, capsys):
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{path}: valid {recognise(path).name} config" in out
    assert isinstance(yaml.safe_load(out.split("\n", 1)[1]), dict), "the resolved config is printed as YAML"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "real").glob("*.yaml")), ids=lambda p: p.name)
def test_real_data_configs_validate(path, capsys):
    """The GPU-cluster configs name datasets and models that are not on this machine: fields only."""
    assert main(["check", "--no-files", "--quiet", str(path)]) == 0, capsys.readouterr().err
    names_data = not path.name.startswith("pretrain")  # pre-training reads --data, not a config field
    assert main(["check", "--quiet", str(path)]) == (2 if names_data else 0)
    assert ("does not exist" in capsys.readouterr().err) == names_data


def test_check_lists_every_error_with_its_dotted_path_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {REPO / 'configs' / 'toy.yaml'}\nadapter: {{stepz: 3, rank: -1}}\n"
                   "sampler: {num_images: 0}\n")
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert all(f in err for f in ("adapter.stepz", "adapter.rank", "sampler.num_images")), err
    assert "Traceback" not in err
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"_BASE_: {REPO / 'configs' / 'toy.yaml'}\nsources: [{{name: a, root: {tmp_path / 'nope'}}}]\n"
                       "base_model: {path: ./no-such-model}\n")
    assert main(["check", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "sources[0].root" in err and "base_model.path" in err


def test_check_names_missing_vi_folders():
    from diffreid.config import ConfigError

    with pytest.raises(ConfigError, match="vi_root: folder /nope does not exist"):
        check_config(REPO / "configs" / "toy-vi.yaml", overrides=["vi_root=/nope"])


def test_check_recognises_the_stage_and_follows_includes():
    stage, cfg = check_config(REPO / "configs" / "toy-run-all.yaml", overrides=["pretrain.epochs=1"])
    assert stage is STAGES["run_all"] and cfg.pretrain.epochs == 1 and cfg.pretrain.backbone == "resnet18"
    assert recognise(REPO / "configs" / "toy-reid.yaml") is STAGES["train"]
    assert recognise(REPO / "configs" / "toy-pretrain.yaml") is STAGES["pretrain"]


@pytest.mark.slow
def test_build_pretrain_finetune_commands_write_their_outputs(tmp_path, capsys):
    build = tmp_path / "build"
    assert main(["build", "--config", str(REPO / "configs" / "toy.yaml"), "--out", str(build), "--quiet",
                 *(x for o in BUILD_FAST for x in ("--set", o))]) == 0
    assert (build / "report.html").is_file() and (build / "manifest.parquet").is_file()
    assert yaml.safe_load((build / "config.yaml").read_text())["adapter"]["steps"] == 2
    assert main(["data", "verify", str(build)]) == 0

    pre = tmp_path / "pretrain"
    assert main(["pretrain", "--config", str(REPO / "configs" / "toy-pretrain.yaml"), "--data", str(build),
                 "--out", str(pre), "--quiet", "--set", "epochs=1", "--set", "warmup_epochs=0",
                 "--set", "batch_size=4"]) == 0
    assert (pre / "backbone.safetensors").is_file() and (pre / "config.yaml").is_file()

    ft = tmp_path / "finetune"
    src = yaml.safe_load((build / "config.yaml").read_text())["sources"][0]
    world = build / "sources" / src["name"]
    assert world.is_dir(), "the toy source world is rendered inside the build"
    assert main(["finetune-eval", "--config", str(REPO / "configs" / "toy-run-all.yaml"), "--out", str(ft)]) == 2
    capsys.readouterr()
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(yaml.safe_dump({
        "target": {"root": str(world)}, "settings": ["fs"], "fractions": [50], "seeds": [0],
        "inits": {"random": None, "diffperson": str(pre / "backbone.safetensors")},
        "train": {"model": {"backbone": "resnet18"}, "height": 64, "width": 32, "P": 2, "K": 2, "epochs": 1,
                  "warmup_epochs": 0, "milestones": [1], "num_workers": 0, "iters_per_epoch": 2}}))
    assert main(["finetune-eval", "--config", str(cfg), "--out", str(ft), "--quiet"]) == 0
    assert "diffperson" in capsys.readouterr().out
    for name in ("results.csv", "results.md", "results_runs.csv", "config.yaml"):
        assert (ft / name).is_file(), name


@pytest.mark.slow
@pytest.mark.ray
def test_serve_command_serves_on_loopback_and_stops_on_ctrl_c(tmp_path):
    """`diffreid serve` as a user starts it (its own local Ray, the tiny toy setup under ./outputs/serve): it
    answers on 127.0.0.1 and, once serving, stops cleanly on Ctrl-C (SIGINT); a Ctrl-C during start-up ends it
    with 130 ('interrupted'). Its process group, which holds its Ray, is killed if anything is left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    from tests.conftest import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own cluster, not the session's
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("diffreid")), "serve", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, health = time.time() + 240, None
        while time.time() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                if health.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        assert health is not None and health.json() == {"status": "ok"}, (tmp_path / "serve.log").read_text()[-3000:]
        doc = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=10).json()
        assert doc["info"]["title"] == "diffreid augmentation service"
        assert (tmp_path / "outputs" / "serve").is_dir(), "the default store lives under ./outputs/serve"
        while f"serving on http://127.0.0.1:{port}" not in (tmp_path / "serve.log").read_text():  # serve.run returned
            assert time.time() < deadline and proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        proc.send_signal(signal.SIGINT)  # Ctrl-C to the command; it shuts Serve and its Ray down itself
        assert proc.wait(timeout=180) == 0  # a loaded machine: Serve waits for replicas still starting up
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    out = (tmp_path / "serve.log").read_text()
    assert f"serving on http://127.0.0.1:{port}" in out and "Traceback" not in out, out[-3000:]


def test_plan_prints_gpu_time_and_storage(tmp_path, capsys):
    real = str(REPO / "configs" / "real" / "build-market1501-lora.yaml")
    assert main(["plan", "--config", real, "--identities", "751"]) == 0
    out = capsys.readouterr().out
    assert "estimate from FLOPs" in out and "| sampling |" in out and "GPU-hours" in out
    assert "GPU memory of one generator (lora, bf16 weights" in out and "24 GB: fits; 80 GB: fits" in out
    measured = tmp_path / "GPU-RESULTS.json"
    measured.write_text('{"steps": 30, "images_per_s": {"bf16/8": 2.0}, "train_steps_per_s": {"lora": 4.0}, '
                        '"train_batch": 2}')
    assert main(["plan", "--config", real, "--identities", "751", "--gpu-results", str(measured)]) == 0
    out = capsys.readouterr().out
    # 190 images x 30 steps at 2 images/s x 30 steps = 95 s of sampling
    assert "measured" in out and "| sampling | 4484 | 95.0 |" in out
    assert main(["plan", "--config", str(REPO / "configs" / "toy.yaml")]) == 0  # identities counted from the source
    assert "4 identities" in capsys.readouterr().out


@pytest.mark.parametrize("path", SHIPPED + sorted((REPO / "configs" / "real").glob("*.yaml")), ids=lambda p: p.name)
def test_resolved_config_round_trips(path, tmp_path):
    """OUT/config.yaml, the resolved config a stage writes, loads back to the same config."""
    stage, cfg = check_config(path, files=False)
    cfg.to_yaml(tmp_path / "config.yaml")
    again = stage.config_model().load(tmp_path / "config.yaml")
    assert again.model_dump(mode="json") == cfg.model_dump(mode="json")


def test_run_all_refuses_overrides_beside_a_config_object(tmp_path):
    from diffreid.config import ConfigError
    from diffreid.distributed.run_all import RunAllConfig, run_all

    cfg = RunAllConfig.load(str(REPO / "configs" / "toy-run-all.yaml"))
    with pytest.raises(ConfigError, match="apply to a YAML file"):
        run_all(cfg, tmp_path / "out", overrides=["pretrain.epochs=1"])
    assert not (tmp_path / "out").exists()


LOCAL_RAY_PROBE = """
from diffreid.distributed.cluster import init_ray
init_ray(num_cpus=1)
import ray

@ray.remote(num_cpus=0)
class Probe:
    def own_state(self):
        from ray.util.state import get_actor
        return get_actor(ray.get_runtime_context().get_actor_id(), timeout=30).state

print("STATE", ray.get(Probe.remote().own_state.remote()))
ray.shutdown()
"""


@pytest.mark.ray
def test_a_local_clusters_workers_reach_its_own_state_api(tmp_path):
    """A command's own local Ray (``init_ray`` without an address): its workers find this cluster's state API,
    as Ray Train's placement-group cleaner needs, not the dashboard of whatever `ray start` ran last here."""
    import os
    import signal
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", LOCAL_RAY_PROBE], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0 and "STATE ALIVE" in out, out[-3000:]
