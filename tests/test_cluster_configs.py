"""Cluster files: launcher YAMLs against the schema inside the ray wheel, KubeRay resources' required fields,
and every entrypoint / import path / config they name exists in this repo. Plus the job entrypoints' CLI."""
import ast
import fnmatch
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
PACKAGES = ("diffreid", "ray_jobs", "serve_apps", "configs")
JOBS = ("build_diff_person", "pretrain_backbone", "finetune_eval", "run_all", "reproduce", "expand_vi", "train_toy_base")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def rsync_excluded(rel: str, pattern: str) -> bool:
    """rsync's --exclude rule: a leading / anchors at the transfer root; otherwise the pattern matches the
    trailing path components at any depth (a pattern without / matches any single component)."""
    parts = rel.split("/")
    pattern = pattern.rstrip("/")
    if pattern.startswith("/"):
        anchored = pattern[1:].split("/")
        return fnmatch.fnmatch("/".join(parts[:len(anchored)]), "/".join(anchored))
    if "**" in pattern:
        return fnmatch.fnmatch(rel, pattern.replace("**/", "*"))
    n = len(pattern.split("/"))
    return any(fnmatch.fnmatch("/".join(parts[i:i + n]), pattern) for i in range(len(parts)))


def project_files() -> list[str]:
    return [str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]


# ----------------------------------------------------------------------------------------------------------
# Ray cluster launcher (ray up)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_matches_rays_schema(name):
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    cfg = load(CLUSTER / name)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(cfg), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]
    # the schema is permissive: the properties this project relies on
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is CPU-only"
    gpu_types = [t for n, t in types.items() if n != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types), "GPU workers autoscale from 0"
    assert all(t["max_workers"] <= cfg["max_workers"] for t in gpu_types)
    assert 0 < cfg["idle_timeout_minutes"] <= 60
    text = json.dumps(gpu_types)
    assert ('"MarketType": "spot"' in text) if cfg["provider"]["type"] == "aws" else ('"preemptible": true' in text)
    assert any("pip install" in c and "diffreid" in c for c in cfg["setup_commands"]), "the project is installed"
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_sync_keeps_the_package_and_drops_heavy_folders(name):
    cfg = load(CLUSTER / name)
    assert "." in cfg["file_mounts"].values(), "the repo is synced to the nodes"
    excludes = cfg["rsync_exclude"]
    dropped = [f for f in project_files() if any(rsync_excluded(f, p) for p in excludes)]
    assert not dropped, f"rsync_exclude {excludes} would drop project files: {dropped[:5]}"
    for heavy in (".venv/bin/python", ".git/HEAD", "outputs/x.png", "data/market/a.jpg"):
        assert any(rsync_excluded(heavy, p) for p in excludes), f"{heavy} would be synced"


# ----------------------------------------------------------------------------------------------------------
# KubeRay
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kuberay():
    return {name: load(KUBERAY / f"{name}.yaml") for name in ("raycluster", "rayjob", "rayservice")}


def cluster_spec(kuberay, name):
    doc = kuberay[name]
    return {"raycluster": lambda: doc["spec"], "rayjob": lambda: doc["spec"]["rayClusterSpec"],
            "rayservice": lambda: doc["spec"]["rayClusterConfig"]}[name]()


def containers(spec):
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_kuberay_resources_have_the_required_fields(kuberay):
    import ray

    kinds = {"raycluster": "RayCluster", "rayjob": "RayJob", "rayservice": "RayService"}
    for name, doc in kuberay.items():
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == kinds[name]
        assert doc["metadata"]["name"]
        spec = cluster_spec(kuberay, name)
        assert spec["rayVersion"] == ray.__version__, "pods must run the Ray the jobs are written for"
        assert spec["enableInTreeAutoscaling"] is True
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
        gpu_groups = [g for g in spec["workerGroupSpecs"]
                      if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
        assert gpu_groups, "an autoscaling GPU worker group"
        for g in gpu_groups:
            assert g["minReplicas"] == 0 and g["maxReplicas"] >= 1 and g["replicas"] == 0
            assert int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        images = {c["image"] for c in containers(spec)}
        assert len(images) == 1, f"{name}: one image for every pod, got {images}"
        mounts = [{m["mountPath"] for m in c["volumeMounts"]} for c in containers(spec)]
        assert all("/mnt/shared" in m for m in mounts), "every pod sees the shared output volume"
    # one cluster shape, three files
    assert cluster_spec(kuberay, "rayjob") == cluster_spec(kuberay, "raycluster")
    assert cluster_spec(kuberay, "rayservice") == cluster_spec(kuberay, "raycluster")

    job = kuberay["rayjob"]["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert job["submissionMode"] in {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
    assert isinstance(job["entrypoint"], str) and job["entrypoint"].strip()
    service = kuberay["rayservice"]["spec"]
    assert isinstance(service["serveConfigV2"], str) and yaml.safe_load(service["serveConfigV2"])["applications"]


def node_kinds(types: dict[str, tuple[dict, float]]) -> set[tuple[str, bool]]:
    """{(node-kind label, has a GPU)} of node types given as name -> (Ray node labels, GPUs); every type with
    CPUs for Ray carries the label, and it says whether the type has a GPU."""
    from diffreid.distributed.build import NODE_KIND_LABEL

    kinds = set()
    for name, (labels, gpus) in types.items():
        kind = labels.get(NODE_KIND_LABEL)
        assert kind == ("gpu" if gpus else "cpu"), f"node type {name}: {NODE_KIND_LABEL}={kind!r}, GPUs {gpus}"
        kinds.add((kind, bool(gpus)))
    return kinds


def test_cluster_files_label_node_kinds_as_the_test_cluster_does(kuberay):
    """The build's scorer_labels select nodes by `diffreid/node-kind`: the launcher YAMLs and KubeRay groups
    (read with the autoscaler's own parser) label GPU and CPU nodes as the fake test cluster does."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_labels_from_group_spec

    import fake_cluster

    fixture = node_kinds({n: (t["labels"], t["resources"].get("GPU", 0)) for n, t in fake_cluster.NODE_TYPES.items()})
    assert fixture == {("gpu", True), ("cpu", False)}
    for name in ("aws.yaml", "gcp.yaml"):
        types = load(CLUSTER / name)["available_node_types"]
        assert node_kinds({n: (t.get("labels", {}), t["resources"].get("GPU", 0)) for n, t in types.items()}) == fixture
    for name in kuberay:
        groups = cluster_spec(kuberay, name)["workerGroupSpecs"]
        got = node_kinds({g["groupName"]: (_get_labels_from_group_spec(g, g["groupName"]),
                                           int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                                               .get("nvidia.com/gpu", 0))) for g in groups})
        assert got == fixture, name


def test_rayjob_entrypoint_names_a_job_and_config_of_this_repo(kuberay):
    from diffreid.distributed.build import RayBuildJobConfig

    args = shlex.split(kuberay["rayjob"]["spec"]["entrypoint"])
    assert args[:2] == ["python", "-m"]
    module = args[2]
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"{module} is not a module of this repo"
    assert module == "ray_jobs.build_diff_person"
    opts = dict(zip(args[3::2], args[4::2]))
    config = opts["--config"]
    workdir = "/app/"  # the image's WORKDIR (cluster/Dockerfile)
    assert config.startswith(workdir) and (REPO / config[len(workdir):]).is_file()
    assert opts["--out"].startswith("/mnt/shared/"), "outputs must land on the shared volume"
    overrides = [v for k, v in zip(args[3::2], args[4::2]) if k == "--set"]
    cfg = RayBuildJobConfig.load(REPO / config[len(workdir):], overrides=overrides)
    assert cfg.ray.generator_actors >= 1 and cfg.ray.generator_gpus >= 1, \
        "GPU workers start at 0: the pool size and GPUs must be explicit"


def test_rayservice_serves_the_repos_app_with_its_serve_config(kuberay):
    from serve_apps.settings import ServeSettings

    service = yaml.safe_load(kuberay["rayservice"]["spec"]["serveConfigV2"])
    local = load(REPO / "serve_apps" / "config.yaml")
    assert [a["name"] for a in service["applications"]] == [a["name"] for a in local["applications"]]
    for app, ref in zip(service["applications"], local["applications"]):
        assert app["import_path"] == ref["import_path"] and app["route_prefix"] == ref["route_prefix"]
        module, _, attr = app["import_path"].partition(":")
        source = REPO / (module.replace(".", "/") + ".py")
        assert source.is_file(), f"{module} is not in the repo"
        tree = ast.parse(source.read_text())
        assert attr in {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert {d["name"] for d in app["deployments"]} == {d["name"] for d in ref["deployments"]}
        for dep, ref_dep in zip(sorted(app["deployments"], key=lambda d: d["name"]),
                                sorted(ref["deployments"], key=lambda d: d["name"])):
            assert ("autoscaling_config" in dep) == ("autoscaling_config" in ref_dep)
        # the cluster's settings are valid ServeSettings overrides, on the shared volume
        overrides = app["args"].get("overrides", [])
        settings = ServeSettings.load(app["args"].get("config"), overrides)
        assert settings.storage.startswith("/mnt/shared/") or "://" in settings.storage
    gpu_deps = [d for d in service["applications"][0]["deployments"] if d["ray_actor_options"].get("num_gpus")]
    assert {d["name"] for d in gpu_deps} == {"Worker", "Generator"}


def test_dockerfile_builds_the_image_the_pods_run(kuberay):
    import ray

    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray.__version__}-" in text
    assert "WORKDIR /app" in text and "pip install" in text
    for pkg in ("diffreid", "ray_jobs", "serve_apps", "configs", "pyproject.toml"):
        assert f"COPY --chown=ray:users {pkg}" in text, f"{pkg} is not copied into the image"
    image = containers(cluster_spec(kuberay, "raycluster"))[0]["image"]
    assert image in text, "the Dockerfile's tag is the image the pods run"


def test_readme_shows_submit_with_anchored_excludes():
    text = (CLUSTER / "README.md").read_text()
    assert "ray job submit" in text and "--working-dir ." in text
    assert "python -m ray_jobs.build_diff_person --config" in text
    start = text.index("--runtime-env-json '") + len("--runtime-env-json '")
    excludes = json.loads(text[start:text.index("'", start)])["excludes"]
    assert not [f for f in project_files() if any(rsync_excluded(f, p) for p in excludes)]
    for cmd in ("ray up", "ray down", "kubectl apply", "ray job logs", "ray status"):
        assert cmd in text


# ----------------------------------------------------------------------------------------------------------
# job entrypoints: thin CLIs
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("job", JOBS)
def test_job_entrypoints_parse_arguments(job):
    done = subprocess.run([sys.executable, "-m", f"ray_jobs.{job}", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--config" in done.stdout and "--set" in done.stdout


@pytest.mark.parametrize("args, message", [
    (["--config", "nope.yaml"], "config file nope.yaml does not exist"),
    (["--config", "configs/toy-ray.yaml", "--set", "ray.adapter_cache=0"], "ray.adapter_cache"),
    (["--config", "configs/toy-ray.yaml", "--set", "ray.pool=3"], "ray.pool"),
])
def test_build_job_rejects_bad_config_with_one_line(args, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "ray_jobs.build_diff_person", *args, "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not any(tmp_path.iterdir()), "nothing is started before the config is valid"


def test_run_all_rejects_an_override_without_a_stage(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ray_jobs.run_all", "--config", "configs/toy-run-all.yaml",
                           "--out", str(tmp_path), "--set", "epochs=2"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "epochs: Extra inputs are not permitted" in done.stderr
    assert "Traceback" not in done.stderr
