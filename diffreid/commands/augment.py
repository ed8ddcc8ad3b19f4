"""`diffreid augment`: the service's client — upload a person's crops, wait, download the filtered images.
It reads the answers through the service's own response models (serve_apps.schemas, API version 1), so a
service speaking another version is reported as such instead of failing on a missing key."""
from pathlib import Path

from diffreid.cli import CommandError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def register(p):
    p.add_argument("--url", required=True, help="service address, e.g. http://127.0.0.1:8000")
    p.add_argument("--images", required=True, help="folder of crops of ONE person (jpg/png)")
    p.add_argument("--out", required=True, help="folder to unpack the result into (Market layout + manifest)")
    p.add_argument("--token", default=None, help="Bearer token (default: $DIFFREID_SERVE_TOKEN)")
    p.add_argument("--num-images", type=int, default=None, help="images to generate (service default if unset)")
    p.add_argument("--name", default=None, help="a label for this identity")
    p.add_argument("--include-dropped", action="store_true", help="also download images the filter dropped")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the job")
    p.set_defaults(func=run)


def detail(response) -> str:
    try:
        return str(response.json().get("detail"))
    except ValueError:
        return response.text[:300]


def read_state(response, base: str):
    from pydantic import ValidationError

    from serve_apps.schemas import API_VERSION, IdentityState

    try:
        return IdentityState.model_validate(response.json())
    except (ValueError, ValidationError) as err:
        raise CommandError(f"{base} answered with something that is not an identity state of API v{API_VERSION} "
                           f"(is it a diffreid service of this version?): {str(err).splitlines()[0][:200]}") from None


def run(args):
    import io
    import os
    import time
    import zipfile

    import requests
    from tqdm import tqdm

    folder = Path(args.images)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise CommandError(f"--images {folder}: expected a folder holding .jpg/.png crops of one person")
    token = args.token or os.environ.get("DIFFREID_SERVE_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    from serve_apps.schemas import API

    base = args.url.rstrip("/")
    form = {k: v for k, v in (("name", args.name), ("num_images", args.num_images)) if v is not None}

    # 1. upload
    try:
        r = requests.post(f"{base}{API}", headers=headers, data=form, timeout=120,
                          files=[("images", (p.name, p.read_bytes())) for p in files])
    except requests.ConnectionError as err:
        raise CommandError(f"cannot reach {base}: {err}") from None
    if r.status_code != 202:
        raise CommandError(f"upload refused ({r.status_code}): {detail(r)}")
    ident = read_state(r, base).id
    print(f"identity {ident}: {len(files)} crops uploaded")

    # 2. wait
    deadline = time.time() + args.timeout
    with tqdm(total=100, desc="queued", unit="%", bar_format="{desc:<11} {bar} {n:.0f}%") as bar:
        while True:
            r = requests.get(f"{base}{API}/{ident}", headers=headers, timeout=60)
            if r.status_code != 200:
                raise CommandError(f"status of {ident} ({r.status_code}): {detail(r)}")
            state = read_state(r, base)
            bar.set_description_str(state.state)
            bar.update(round(100 * state.progress) - bar.n)
            if state.state == "failed":
                raise CommandError(f"identity {ident} failed: {state.reason}")
            if state.state == "done":
                break
            if time.time() > deadline:
                raise CommandError(f"identity {ident} still {state.state} after {args.timeout:.0f}s; "
                                   f"its status: {base}{API}/{ident}")
            time.sleep(1)

    # 3. download
    r = requests.get(f"{base}{API}/{ident}/archive", headers=headers, timeout=600,
                     params={"include_dropped": str(args.include_dropped).lower()})
    if r.status_code != 200:
        raise CommandError(f"archive of {ident} ({r.status_code}): {detail(r)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(out)
    print(f"{state.counts.kept} kept / {state.counts.dropped} dropped images of {ident} written to {out}")
    return 0
