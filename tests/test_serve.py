"""The augmentation service, tested as a real Serve application on 127.0.0.1 over real HTTP (tiny model, CPU)."""
import io
import json
import re
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = {"min_images": 3, "max_images": 6, "max_file_bytes": 64 * 1024, "max_request_bytes": 256 * 1024,
          "max_pixels": 512 * 512, "max_queued_jobs": 3, "retry_after_s": 7, "max_num_images": 16,
          "max_adapter_steps": 100, "max_generate_images": 8}
FILTERS = ("reid_ctf", "cctf", "clip")  # the toy setup builds a tiny CLIP (base model diffreid:tiny)
IDS: dict[str, str] = {}  # identities shared by the tests of this module, in file order


# ----------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    import ray
    from ray import serve

    from serve_apps.app import AppArgs, build_app
    from serve_apps.settings import toy_build_config
    from tests.conftest import free_port

    if not ray.is_initialized():
        ray.init(address=ray_cluster["address"], log_to_driver=False)
    root = tmp_path_factory.mktemp("serve")
    build = toy_build_config().model_dump(mode="json")
    build["filter"]["filters"] = list(FILTERS)  # every filter the build offers; Re-ID CTF decides
    settings = {"storage": str(root / "store"), "assets_dir": str(root / "assets"), "token": TOKEN,
                "torch_threads": 1, "adapter_cache": 2, "worker_poll_s": 0.2, "limits": LIMITS, "build": build,
                "worker_replicas": 2, "lease_ttl_s": 6.0}
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(AppArgs(settings=settings)), name="diffreid", route_prefix="/")
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "root": root}
    serve.delete("diffreid")
    serve.shutdown()


@pytest.fixture(scope="module")
def http(service):
    import httpx

    with httpx.Client(base_url=service["url"], timeout=120) as client:
        yield client


def crops(seed: int, n: int = 4, fmt: str = "PNG") -> list[tuple[str, bytes, str]]:
    from diffreid.data.toyworld import render_identity_images, sample_identity

    rng = np.random.default_rng(seed)
    out = []
    for i, image in enumerate(render_identity_images(sample_identity(rng, 5000 + seed), n, rng, 64, 32)):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        out.append((f"crop{i}.{fmt.lower()}", buf.getvalue(), f"image/{fmt.lower()}"))
    return out


def upload(http, files, headers=AUTH, **form):
    return http.post("/v1/identities", files=[("images", f) for f in files], data=form, headers=headers)


def wait_state(http, ident, states=("done", "failed"), timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            r = http.get(f"/v1/identities/{ident}", headers=AUTH)
            if r.status_code == 200 and r.json()["state"] in states:
                return r.json()
        except Exception:  # the ingress may be restarting
            pass
        time.sleep(0.5)
    raise AssertionError(f"identity {ident} did not reach {states} within {timeout}s")


def noise_png(side: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def strip_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (90, 40, 20)).save(buf, "PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose header claims width x height (a decompression bomb's calling card)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# ----------------------------------------------------------------------------------------------------------
# tests (module order matters: later tests reuse identities built by earlier ones)
# ----------------------------------------------------------------------------------------------------------
def test_full_flow_upload_done_archive(http, service):
    r = upload(http, crops(1), name="alice", num_images=4, threshold=0.0, seed=3)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "queued" and body["status_url"].endswith(body["id"])
    assert r.headers["location"] == body["status_url"]
    IDS["a"] = ident = body["id"]
    for key, seed in (("b", 2), ("c", 3)):  # queued now, used by the LRU test
        r = upload(http, crops(seed), num_images=2)
        assert r.status_code == 202, r.text
        IDS[key] = r.json()["id"]

    state = wait_state(http, ident)
    assert state["state"] == "done", state
    assert state["counts"] == {"uploaded": 4, "kept": 4, "dropped": 0}
    assert [h["state"] for h in state["history"]][:5] == ["queued", "queued", "training", "generating", "filtering"]

    images = http.get(f"/v1/identities/{ident}/images", headers=AUTH).json()["images"]
    assert len(images) == 4 and all(im["kept"] and 0 <= im[f"score_{name}"] <= 1 for im in images for name in FILTERS)
    assert all("sks person" in im["prompt"] and im["adapter"] == "adapters/1" for im in images)
    png = http.get(images[0]["url"], headers=AUTH)
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (32, 64)

    r = http.get(f"/v1/identities/{ident}/archive", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    names = zf.namelist()
    assert {"manifest.parquet", "identities.json", "pid_map.json", "diffperson.json"} <= set(names)
    market = sorted(n for n in names if n.startswith("bounding_box_train/"))
    assert market == [f"bounding_box_train/0001_c9s1_{i:06d}_00.png" for i in range(4)]
    import pandas as pd

    manifest = pd.read_parquet(io.BytesIO(zf.read("manifest.parquet")))
    assert sorted(manifest["file"]) == market and manifest["kept"].all()
    assert set(manifest["source_dataset"]) == {"upload"}


def test_generate_twice_reuses_resident_adapter(http):
    ident = IDS["a"]
    first = http.post(f"/v1/identities/{ident}/generate", json={"num_images": 2, "include_dropped": True},
                      headers=AUTH)
    second = http.post(f"/v1/identities/{ident}/generate", json={"num_images": 3, "include_dropped": True},
                       headers=AUTH)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    first, second = first.json(), second.json()
    assert first["adapter"]["loaded_now"] and first["adapter"]["loads"] == 1
    assert not second["adapter"]["loaded_now"] and second["adapter"]["loads"] == 1  # no reload
    assert len(first["images"]) == 2 and len(second["images"]) == 3
    indices = [im["index"] for im in first["images"] + second["images"]]
    assert indices == list(range(4, 9))  # after the job's 4 images, never repeated
    image = Image.open(io.BytesIO(__import__("base64").b64decode(second["images"][0]["png_base64"])))
    assert image.size == (32, 64)
    for im in first["images"] + second["images"]:  # every enabled filter's score, the deciding one as "score"
        assert all(0 <= im[f"score_{name}"] <= 1 for name in FILTERS) and im["score"] == im["score_reid_ctf"]


def test_lru_eviction_beyond_capacity(http):
    for key in ("b", "c"):
        assert wait_state(http, IDS[key])["state"] == "done"

    def gen(key):
        r = http.post(f"/v1/identities/{IDS[key]}/generate", json={"num_images": 1}, headers=AUTH)
        assert r.status_code == 200, r.text
        return r.json()["adapter"]

    before = gen("a")
    assert not before["loaded_now"]
    assert gen("b")["loaded_now"]
    after_c = gen("c")  # capacity 2: a (least recently used) is evicted
    assert after_c["loaded_now"] and after_c["evictions"] == before["evictions"] + 1
    assert set(after_c["resident"]) == {f"u{IDS['b']}", f"u{IDS['c']}"}
    again = gen("a")
    assert again["loaded_now"] and again["loads"] == 2


def test_metrics_count_jobs_and_adapters_and_answers_carry_a_request_id(http, ray_cluster):
    """After the flows above (3 jobs done, adapters loaded and evicted), Ray's metrics port shows them."""
    import httpx

    assert http.get("/healthz").headers.get("x-request-id")
    wanted = {'event="done"': "diffreid_jobs_total", 'event="eviction"': "diffreid_adapters_total",
              "": "diffreid_kept_ratio_bucket"}
    deadline, text = time.time() + 90, ""
    while time.time() < deadline:  # the agent exports every few seconds
        text = httpx.get(ray_cluster["metrics"], timeout=10).text
        lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
        found = {tag: [ln for ln in lines if name in ln and tag in ln] for tag, name in wanted.items()}
        if all(found.values()):
            break
        time.sleep(3)
    assert all(found.values()), {k: v[:2] for k, v in found.items()}
    done = sum(float(ln.rsplit(" ", 1)[1]) for ln in found['event="done"'])
    assert done >= 3


def bad_cases():
    png = crops(9, 1)[0][1]
    jpeg = crops(9, 1, "JPEG")[0][1]
    gif = io.BytesIO()
    Image.new("RGB", (32, 64)).save(gif, "GIF")
    good = [(f"c{i}.png", png, "image/png") for i in range(3)]
    big_files = [(f"n{i}.png", noise_png(140, i), "image/png") for i in range(6)]
    unknown = "0" * 32
    return [
        ("non-image bytes", "upload", {"files": good[:2] + [("x.png", b"hello, not an image", "image/png")]}, 415),
        ("truncated jpeg", "upload", {"files": good[:2] + [("t.jpg", jpeg[:len(jpeg) // 2], "image/jpeg")]}, 422),
        ("gif not allowed", "upload", {"files": good[:2] + [("g.png", gif.getvalue(), "image/png")]}, 415),
        ("empty file", "upload", {"files": good[:2] + [("e.png", b"", "image/png")]}, 422),
        ("zero files", "upload", {"files": []}, 422),
        ("too few files", "upload", {"files": good[:2]}, 422),
        ("too many files", "upload", {"files": good * 2 + good[:1]}, 413),
        ("tiny crop", "upload", {"files": good[:2] + [("dot.png", noise_png(1), "image/png")],
                                 "detail": ["'dot.png'", "1x1", "limits.min_side 16"]}, 422),
        ("crop one side short", "upload", {"files": good[:2] + [("strip.png", strip_png(64, 8), "image/png")],
                                           "detail": ["'strip.png'", "limits.min_side 16"]}, 422),
        ("oversize file", "upload", {"files": good[:2] + [("big.png", noise_png(200), "image/png")]}, 413),
        ("oversize request", "upload", {"files": big_files}, 413),
        ("huge dimensions", "upload", {"files": good[:2] + [("bomb.png", png_claiming(30000, 30000), "image/png")]},
         413),
        ("num_images 0", "upload", {"files": good, "form": {"num_images": "0"}}, 422),
        ("num_images over limit", "upload", {"files": good, "form": {"num_images": "999"}}, 422),
        ("threshold 1.5", "upload", {"files": good, "form": {"threshold": "1.5"}}, 422),
        ("unknown adapter mode", "upload", {"files": good, "form": {"adapter_mode": "banana"}}, 422),
        ("steps over limit", "upload", {"files": good, "form": {"steps": "5000"}}, 422),
        ("name too long", "upload", {"files": good, "form": {"name": "x" * 200}}, 422),
        ("missing token", "upload", {"files": good, "headers": {}}, 401),
        ("wrong token", "get", {"path": f"/v1/identities/{unknown}", "headers": {"Authorization": "Bearer nope"}},
         401),
        ("not a bearer scheme", "get", {"path": f"/v1/identities/{unknown}", "headers": {"Authorization": TOKEN}}, 401),
        ("../ id (encoded)", "get", {"path": "/v1/identities/..%2F..%2Fetc%2Fpasswd"}, 404),
        ("dot-dot id", "get", {"path": "/v1/identities/.."}, 404),
        ("malformed id", "get", {"path": "/v1/identities/not-an-id"}, 400),
        ("unknown id", "get", {"path": f"/v1/identities/{unknown}"}, 404),
        ("unknown id images", "get", {"path": f"/v1/identities/{unknown}/images"}, 404),
        ("unknown id archive", "get", {"path": f"/v1/identities/{unknown}/archive"}, 404),
        ("unknown id generate", "post", {"path": f"/v1/identities/{unknown}/generate", "json": {}}, 404),
        ("unknown id delete", "delete", {"path": f"/v1/identities/{unknown}"}, 404),
        ("generate too many", "post", {"path": "/v1/identities/{a}/generate", "json": {"num_images": 50}}, 422),
        ("generate bad body", "post", {"path": "/v1/identities/{a}/generate", "json": {"num_images": "many"}}, 422),
        ("file outside dataset", "get", {"path": "/v1/identities/{a}/files/state.json"}, 400),
        ("file traversal", "get", {"path": "/v1/identities/{a}/files/bounding_box_train%2F..%2F..%2Fstate.json"}, 400),
    ]


@pytest.mark.parametrize("case", bad_cases(), ids=lambda c: c[0])
def test_bad_input_answered_with_4xx_and_server_stays_healthy(http, case):
    _, kind, spec, expected = case
    headers = spec.get("headers", AUTH)
    if kind == "upload":
        r = upload(http, spec["files"], headers=headers, **spec.get("form", {}))
    else:
        path = spec["path"].replace("{a}", IDS.get("a", "0" * 32))
        kwargs = {"json": spec["json"]} if "json" in spec else {}
        r = http.request(kind.upper(), path, headers=headers, **kwargs)
    assert r.status_code == expected, (r.status_code, r.text)
    if r.headers.get("content-type", "").startswith("application/json"):
        assert r.json()["detail"]  # a message, not an empty body
    for text in spec.get("detail", ()):  # it names the file and the limit
        assert text in r.json()["detail"], r.json()["detail"]
    assert http.get("/healthz").json() == {"status": "ok"}  # no token needed


def test_queue_limit_answers_429_with_retry_after(http):
    accepted = []
    for seed in range(20, 26):
        r = upload(http, crops(seed, 3), num_images=1, steps=50)
        if r.status_code == 429:
            assert r.headers["Retry-After"] == "7" and "max_queued_jobs" in r.json()["detail"]
            break
        assert r.status_code == 202, r.text
        accepted.append(r.json()["id"])
    else:
        pytest.fail("six uploads were accepted with max_queued_jobs = 3")
    assert len(accepted) <= 3
    for ident in accepted:
        assert http.delete(f"/v1/identities/{ident}", headers=AUTH).status_code == 204
        assert http.get(f"/v1/identities/{ident}", headers=AUTH).status_code == 404
    deadline = time.time() + 60
    while http.get("/v1/identities", headers=AUTH).json()["queued"] and time.time() < deadline:
        time.sleep(0.5)
    assert http.get("/v1/identities", headers=AUTH).json()["queued"] == []


def test_twenty_concurrent_requests_all_answered(http):
    import httpx

    a, b = IDS["a"], IDS["b"]
    calls = ([("POST", f"/v1/identities/{x}/generate", {"num_images": 1}) for x in (a, b) * 4]
             + [("GET", f"/v1/identities/{x}", None) for x in (a, b, a, b, a, b)]
             + [("GET", f"/v1/identities/{a}/images", None)] * 3 + [("GET", "/healthz", None)] * 3)
    assert len(calls) == 20

    def call(c):
        method, path, body = c
        with httpx.Client(base_url=str(http.base_url), timeout=180) as client:
            return client.request(method, path, json=body, headers=AUTH)

    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(call, c) for c in calls]
        finished, pending = wait(futures, timeout=240)
    assert not pending, f"{len(pending)} of 20 requests unanswered after 240 s"
    codes = [f.result().status_code for f in futures]
    assert codes == [200] * 20, codes
    batched = [f.result().json()["adapter"]["batched_requests"] for f in futures[:8]]
    assert all(n >= 1 for n in batched)


def test_augment_command_uploads_waits_and_downloads(service, tmp_path):
    import pandas as pd

    from diffreid.cli import main

    src = tmp_path / "crops"
    src.mkdir()
    for name, data, _ in crops(30, 3, "JPEG"):
        (src / name).write_bytes(data)
    out = tmp_path / "out"
    rc = main(["augment", "--url", service["url"], "--images", str(src), "--out", str(out), "--token", TOKEN,
               "--num-images", "3", "--include-dropped"])
    assert rc == 0
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == 3
    on_disk = sorted(str(p.relative_to(out)) for p in out.glob("*/*.png"))
    assert on_disk == sorted(manifest["file"])
    assert main(["augment", "--url", service["url"], "--images", str(src), "--out", str(out),
                 "--token", "wrong"]) == 2


def test_serve_binds_loopback_only(service):
    """The HTTP proxy and every other listening socket of this process tree and the Ray cluster is on loopback."""
    out = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    lines = [ln.split() for ln in out.splitlines()[1:] if "users:" in ln]  # sockets of processes we can see
    http = [cols for cols in lines if cols[3].endswith(f":{service['port']}")]
    assert http and all(cols[3].startswith("127.0.0.1:") for cols in http), out
    exposed = [" ".join(cols) for cols in lines if not cols[3].startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:"))]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)


def test_state_survives_killing_replicas(http):
    import ray

    r = upload(http, crops(40), name="dora", num_images=2, steps=60)
    assert r.status_code == 202, r.text
    ident = r.json()["id"]
    wait_state(http, ident, states=("training",), timeout=120)
    time.sleep(2.0)  # some adapter steps and a checkpoint
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and ("#Worker#" in a["name"] or "#Ingress#" in a["name"])]
    assert len(replicas) == 3, replicas  # two Workers, one Ingress
    for actor in replicas:
        ray.kill(ray.get_actor(actor["name"], namespace="serve"), no_restart=True)

    state = wait_state(http, ident, timeout=300)  # new replicas: same store, same identities
    assert state["state"] == "done", state
    assert state["attempts"] == 2
    assert any("resumed at stage 'training'" in h["note"] for h in state["history"])
    assert http.get(f"/v1/identities/{IDS['a']}", headers=AUTH).json()["state"] == "done"
    assert set(IDS.values()) <= set(http.get("/v1/identities", headers=AUTH).json()["identities"])


def test_a_dead_workers_job_is_taken_over_and_finishes_exactly_once(http, service):
    import ray
    from ray.util.state import list_actors

    r = upload(http, crops(41), name="erin", num_images=3, steps=60)
    assert r.status_code == 202, r.text
    ident = r.json()["id"]
    wait_state(http, ident, states=("training",), timeout=120)
    leases = service["root"] / "store" / "identities" / ident / "leases"
    first = json.loads(sorted(leases.glob("*.json"))[-1].read_text())
    holder_pid = int(first["owner"].split(":")[1])
    holder = [a for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
              if "#Worker#" in (a.name or "") and a.pid == holder_pid]
    assert len(holder) == 1, first
    ray.kill(ray.get_actor(holder[0].name, namespace="serve"), no_restart=True)

    state = wait_state(http, ident, timeout=300)
    assert state["state"] == "done", state
    assert state["attempts"] == 2
    assert [h["state"] for h in state["history"]].count("done") == 1
    owners = [json.loads(p.read_text())["owner"] for p in sorted(leases.glob("*.json"))]
    assert owners[0] == first["owner"] and owners[-1] != first["owner"]
    listed = http.get(f"/v1/identities/{ident}/images", params={"include_dropped": True}, headers=AUTH).json()
    files = [item["file"] for item in listed["images"]]
    assert len(files) == 3 == len(set(files))  # every image once: nothing written twice


def test_openapi_describes_every_response_and_real_answers_match_it(http):
    """/openapi.json of the running app: each operation has its success response with a schema, every error the
    one error body, path parameters their patterns; real answers validate against what the document says."""
    import jsonschema

    doc = http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorBody"]["required"] == ["detail"]
    assert schemas["ErrorBody"]["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in schemas  # request validation errors carry the one error body too
    error_body = {"$ref": "#/components/schemas/ErrorBody"}
    operations = [(method, path, op) for path, ops in doc["paths"].items() for method, op in ops.items()]
    assert len(operations) == 9, [(m, p) for m, p, _ in operations]
    for method, path, op in operations:
        where = f"{method.upper()} {path}"
        success = [code for code in op["responses"] if code.startswith("2")]
        assert len(success) == 1, where
        answer = op["responses"][success[0]]
        if success[0] == "204":
            assert "content" not in answer, where
        else:
            content = answer["content"]
            if "application/json" in content:
                assert content["application/json"]["schema"]["$ref"].startswith("#/components/schemas/"), where
            else:  # an image or the archive
                assert all(c["schema"] == {"type": "string", "format": "binary"} for c in content.values()), where
        failures = {code: r for code, r in op["responses"].items() if not code.startswith("2")}
        if path != "/healthz":
            assert {"401", "default"} <= set(failures), where
        assert all(r["content"]["application/json"]["schema"] == error_body for r in failures.values()), where
        for param in op.get("parameters", []):
            if param["in"] == "path":
                assert param["schema"]["pattern"], where
                if param["name"] == "ident":
                    assert param["schema"]["pattern"] == "^[0-9a-f]{32}$", where

    def check(response, method, path):
        responses = doc["paths"][path][method]["responses"]
        documented = responses.get(str(response.status_code)) or responses["default"]
        schema = documented["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**schema, "components": doc["components"]})

    one = "/v1/identities/{ident}"
    a, unknown = IDS["a"], "0" * 32
    check(http.get("/healthz"), "get", "/healthz")
    check(http.get("/v1/identities", headers=AUTH), "get", "/v1/identities")
    check(http.get(f"/v1/identities/{a}", headers=AUTH), "get", one)
    check(http.get(f"/v1/identities/{a}/images?include_dropped=true", headers=AUTH), "get", one + "/images")
    generated = http.post(f"/v1/identities/{a}/generate", json={"num_images": 2, "include_dropped": True},
                          headers=AUTH)
    assert generated.status_code == 200, generated.text
    check(generated, "post", one + "/generate")
    for response, method, path, code in [
        (http.get(f"/v1/identities/{unknown}", headers=AUTH), "get", one, 404),
        (http.get("/v1/identities/not-an-id", headers=AUTH), "get", one, 400),
        (http.get(f"/v1/identities/{a}", headers={}), "get", one, 401),
        (http.post(f"/v1/identities/{a}/generate", json={"num_images": "many"}, headers=AUTH), "post",
         one + "/generate", 422),
        (http.get(f"/v1/identities/{a}/images?include_dropped=maybe", headers=AUTH), "get", one + "/images", 422),
    ]:
        assert response.status_code == code, (path, response.text)
        assert str(code) in doc["paths"][path][method]["responses"], (path, code)
        check(response, method, path)


def test_fuzzing_the_openapi_document_finds_no_5xx_and_no_schema_mismatch(service, tmp_path):
    """schemathesis (its CLI, as a user runs it) generates requests from /openapi.json and checks each answer: no
    5xx, status codes, content types, headers and bodies as documented, invalid input refused, and no operation
    that mostly rejects the data its own schema allows (the configured limits are in the document). The upload is
    fuzzed with invalid data only: schema-valid bytes are not crops, and a valid upload would start a training
    job. Bounded: 12 examples per operation, 2 x 45 s, 127.0.0.1 only."""
    config = tmp_path / "schemathesis.toml"
    config.write_text('[warnings]\nfail-on = ["validation_mismatch"]\n')
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,"
              "response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method")
    upload = "POST /v1/identities"
    for name, select in (("api", ["--exclude-name", upload]), ("upload", ["--include-name", upload, "--mode",
                                                                          "negative"])):
        result = subprocess.run(
            [str(Path(sys.executable).with_name("st")), "--config-file", str(config), "run",
             f"{service['url']}/openapi.json", *select, "--checks", checks, "--phases", "examples,coverage,fuzzing",
             "--max-examples", "12", "--max-time", "45", "--workers", "1", "--seed", "0", "--no-color",
             "--request-timeout", "60", "-H", f"Authorization: Bearer {TOKEN}", "--report", "junit",
             "--report-dir", str(tmp_path / name)],
            capture_output=True, text=True, timeout=300, cwd=tmp_path)
        (tmp_path / f"{name}.txt").write_text(result.stdout + result.stderr)
        warnings = result.stdout.find("WARNINGS")
        detail = result.stdout[warnings:warnings + 6000] if warnings >= 0 else (result.stdout + result.stderr)[-6000:]
        assert result.returncode == 0, f"{name}: {detail}"
        assert "Schema validation mismatch" not in result.stdout, f"{name}: {detail}"
        assert re.search(r"\d+ generated, \d+ passed", result.stdout), f"{name}: {detail}"
        assert list((tmp_path / name).glob("junit-*.xml")), name


def test_store_round_trips_through_an_object_store_url(tmp_path):
    """The fsspec path used for s3:// and gs://, exercised on fsspec's in-memory filesystem."""
    from serve_apps.store import Registry, Store

    store = Store("memory://diffreid-test", scratch_dir=str(tmp_path / "scratch"))
    assert not store.is_local
    ident = "ab" * 16
    store.write_json({"id": ident, "state": "queued", "history": [], "created": 1.0}, "identities", ident, "state.json")
    local = store.local("identities", ident, "work")
    (local / "adapters" / "1").mkdir(parents=True)
    (local / "adapters" / "1" / "w.bin").write_bytes(b"weights")
    store.push("identities", ident, "work")
    assert store.read_bytes("identities", ident, "work", "adapters", "1", "w.bin") == b"weights"

    other = Store("memory://diffreid-test", scratch_dir=str(tmp_path / "scratch2"))  # another replica
    pulled = other.pull("identities", ident, "work")
    assert (pulled / "adapters" / "1" / "w.bin").read_bytes() == b"weights"
    registry = Registry(other)
    assert registry.identities() == [ident]
    registry.update(ident, state="training", note="x")
    assert Registry(store).state(ident)["state"] == "training"
    registry.delete(ident)
    assert registry.read(ident) is None and not store.exists("identities", ident)


@pytest.mark.parametrize("url", ["folder", "memory://diffreid-leases"])
def test_leases_give_a_job_one_owner_and_pass_it_on_when_they_lapse(url, tmp_path):
    import threading

    from serve_apps.store import LeaseLost, Leases, Store

    store = Store(str(tmp_path / "store") if url == "folder" else url, scratch_dir=str(tmp_path / "scratch"))
    ident = "cd" * 16
    a, b = Leases(store, ttl_s=0.5), Leases(store, ttl_s=0.5)
    assert a.claim(ident, "A") == 1 and b.claim(ident, "B") is None
    a.renew(ident, "A", 1)
    assert b.holder(ident)["owner"] == "A"
    time.sleep(0.6)  # A stopped renewing: its lease lapses
    assert b.holder(ident) is None and b.claim(ident, "B") == 2
    with pytest.raises(LeaseLost):
        a.renew(ident, "A", 1)
    b.release(ident, "B", 2)
    assert a.claim(ident, "A") == 3  # a released lease is free at once

    # many workers racing for one lapsed lease: exactly one wins
    time.sleep(0.6)
    won, start = [], threading.Barrier(8)

    def race(name):
        start.wait()
        if Leases(store, ttl_s=5).claim(ident, name) is not None:
            won.append(name)

    threads = [threading.Thread(target=race, args=(f"W{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and a.holder(ident)["owner"] == won[0]


@pytest.mark.parametrize("client", ["httpx", "curl"])
def test_an_oversized_upload_is_refused_and_the_client_reads_the_413(service, client, tmp_path):
    """8 MiB against a 256 KiB limit: refused on its Content-Length, and the client gets the status, not a reset
    (httpx streams the whole body; curl asks 'Expect: 100-continue' first and never sends it)."""
    import httpx

    body = b"x" * (8 * 1024 * 1024)
    headers = {**AUTH, "Content-Type": "multipart/form-data; boundary=b"}
    if client == "httpx":
        with httpx.Client(base_url=service["url"], timeout=60) as fresh:
            r = fresh.post("/v1/identities", content=body, headers=headers)
        status, text = r.status_code, r.text
    else:
        (tmp_path / "body").write_bytes(body)
        out = subprocess.run(["curl", "-sS", "-o", str(tmp_path / "out"), "-w", "%{http_code}", "--max-time", "60",
                              "-H", f"Authorization: {AUTH['Authorization']}", "-H", headers["Content-Type"].join(
                                  ["Content-Type: ", ""]), "--data-binary", f"@{tmp_path / 'body'}",
                              f"{service['url']}/v1/identities"], capture_output=True, text=True, timeout=90)
        status, text = int(out.stdout or 0), (tmp_path / "out").read_text() if (tmp_path / "out").exists() else ""
    assert status == 413, (status, text)
    assert "limits.max_request_bytes" in text
