"""The web page at / in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by selenium
through the whole flow against the running Serve app on 127.0.0.1 with a bearer token configured."""
import io
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from tests import test_serve as serve_tests

pytestmark = [pytest.mark.ray, pytest.mark.slow]

service = serve_tests.service  # the same app as tests/test_serve.py (toy build, token, limits), one per module
http = serve_tests.http
TOKEN, AUTH = serve_tests.TOKEN, serve_tests.AUTH
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve-page.png"  # shown by the README
NUM_IMAGES, THRESHOLD, MORE = 4, 0.5, 3


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not Path(CHROMEDRIVER).exists():
        message = f"{CHROMEDRIVER} missing: apt-get install chromium chromium-driver (`make test` does, as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    folder = tmp_path_factory.mktemp("browser")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-extensions", "--hide-scrollbars", "--window-size=1000,1200"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(folder / "downloads"),
                                              "download.prompt_for_download": False})
    # an explicit driver path: selenium never looks for (or downloads) one of its own
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(folder / "driver.log")))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver, folder / "downloads"
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float, what: str):
    """``condition(driver)`` until truthy, at most ``timeout`` s; the page's error text in the failure message."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except TimeoutException:
        error = driver.find_element("id", "error").text
        raise AssertionError(f"page: no {what} within {timeout}s (error shown: {error!r})") from None


def el(driver, ident: str):
    return driver.find_element("id", ident)


def figures(driver, grid: str) -> dict[str, dict]:
    """A thumbnail grid as {key: {caption, loaded}}; ``loaded``: the image decoded (naturalWidth > 0)."""
    return {f.get_attribute("data-key"): {
        "caption": f.find_element("tag name", "figcaption").text,
        "loaded": driver.execute_script("return arguments[0].naturalWidth", f.find_element("tag name", "img")) > 0}
        for f in el(driver, grid).find_elements("tag name", "figure")}


def caption_scores(caption: str) -> dict[str, float]:
    return {name: float(value) for name, value in re.findall(r"(\w+) (\d\.\d{3})", caption)}


def test_page_needs_no_token_and_holds_no_data(http):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "/v1/identities" in page.text and not re.search(r"[0-9a-f]{32}", page.text)
    assert http.get("/v1/identities").status_code == 401  # the data still needs the token
    assert "/" not in http.get("/openapi.json").json()["paths"]  # the page is not part of the API contract


def test_whole_flow_in_a_browser(service, http, browser, tmp_path):
    from selenium.webdriver.support import expected_conditions as expected
    from selenium.webdriver.support.ui import Select

    driver, downloads = browser
    started = time.time()

    # 1. the page asks for the token once; a wrong one is answered with the server's detail
    driver.get(service["url"] + "/")
    wait_for(driver, lambda d: el(d, "auth").is_displayed(), 30, "token form")
    assert not el(driver, "main").is_displayed()
    el(driver, "token").send_keys("wrong")
    el(driver, "token-submit").click()
    wait_for(driver, lambda d: "missing or wrong bearer token" in el(d, "error").text, 30, "401 detail")
    el(driver, "token").clear()
    el(driver, "token").send_keys(TOKEN)
    el(driver, "token-submit").click()
    wait_for(driver, lambda d: el(d, "main").is_displayed() and not el(d, "auth").is_displayed(), 30, "main view")

    # 2. too few crops: the 422 detail is shown as text; then 4 toy crops with every option set
    paths = []
    for name, data, _ in serve_tests.crops(50, 4):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    el(driver, "images").send_keys("\n".join(paths[:2]))
    el(driver, "upload-submit").click()
    wait_for(driver, lambda d: "limits.min_images" in el(d, "error").text, 30, "422 detail")
    el(driver, "images").clear()
    el(driver, "images").send_keys("\n".join(paths))
    form = el(driver, "upload-form")
    for field, value in (("name", "page-test"), ("num_images", NUM_IMAGES), ("steps", 6), ("seed", 5),
                         ("threshold", THRESHOLD)):
        form.find_element("name", field).send_keys(str(value))
    Select(form.find_element("name", "adapter_mode")).select_by_visible_text("lora")
    el(driver, "upload-submit").click()
    ident = wait_for(driver, lambda d: el(d, "job").is_displayed() and el(d, "job-id").text, 30, "new identity")
    assert re.fullmatch(r"[0-9a-f]{32}", ident) and not el(driver, "error").text
    state = http.get(f"/v1/identities/{ident}", headers=AUTH).json()
    assert state["name"] == "page-test"
    assert state["options"] == {"num_images": NUM_IMAGES, "adapter_mode": "lora", "steps": 6, "seed": 5,
                                "threshold": THRESHOLD}

    # 3. the page polls the status until the job is done
    seen = set()
    deadline = time.time() + 300
    while time.time() < deadline:
        seen.add(el(driver, "job-state").get_attribute("data-state"))
        if seen & {"done", "failed"}:
            break
        time.sleep(0.2)
    assert "done" in seen, (seen, el(driver, "job-note").text)
    assert el(driver, "job-progress").get_attribute("value") == "1"
    upload_s = time.time() - started

    # 4. kept and dropped thumbnails, each with its scores, as the list route says
    wait_for(driver, lambda d: el(d, "results").is_displayed(), 60, "results")
    listed = http.get(f"/v1/identities/{ident}/images?include_dropped=true", headers=AUTH).json()["images"]
    assert len(listed) == NUM_IMAGES
    shown = {"kept": figures(driver, "kept"), "dropped": figures(driver, "dropped")}
    for grid, kept in (("kept", True), ("dropped", False)):
        assert sorted(shown[grid]) == sorted(im["file"] for im in listed if im["kept"] is kept), grid
        assert el(driver, f"{grid}-count").text == str(len(shown[grid]))
    for im in listed:
        fig = shown["kept" if im["kept"] else "dropped"][im["file"]]
        assert fig["loaded"], im["file"]
        scores = caption_scores(fig["caption"])
        assert set(scores) == {"reid_ctf", "cctf", "clip"}, fig["caption"]
        assert all(abs(scores[k] - im[f"score_{k}"]) < 6e-4 for k in scores), (fig["caption"], im)
    counts = http.get(f"/v1/identities/{ident}", headers=AUTH).json()["counts"]
    assert el(driver, "job-counts").text == f"4 uploaded, {counts['kept']} kept, {counts['dropped']} dropped"
    wait_for(driver, lambda d: "queued" not in el(d, "identities").text, 30, "the list refreshed once done")

    # 5. more images appear, each with its deciding score
    more = el(driver, "more-count")
    more.clear()
    more.send_keys(str(MORE))
    el(driver, "more").click()
    wait_for(driver, lambda d: len(figures(d, "more-images")) == MORE, 180, f"{MORE} more images")
    extra = figures(driver, "more-images")
    assert sorted(extra) == [f"index-{i}" for i in range(NUM_IMAGES, NUM_IMAGES + MORE)]  # after the job's
    assert all(f["loaded"] and re.fullmatch(r"#\d+ (kept|dropped)\nscore \d\.\d{3}", f["caption"])
               for f in extra.values()), extra
    assert f"{MORE} more images" in el(driver, "notice").text

    # 6. the archive: the page fetches it with the token and offers it as a download of the same zip
    el(driver, "download").click()
    link = wait_for(driver, lambda d: (el(d, "download-link").get_attribute("href") or "").startswith("blob:")
                    and el(d, "download-link"), 60, "archive link")
    assert link.get_attribute("download") == f"{ident}.zip"
    in_page = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b))));",
        link.get_attribute("href"))
    api = http.get(f"/v1/identities/{ident}/archive", headers=AUTH)
    assert api.status_code == 200 and bytes(in_page) == api.content
    names = zipfile.ZipFile(io.BytesIO(bytes(in_page))).namelist()
    assert "manifest.parquet" in names and len([n for n in names if n.startswith("bounding_box_train/")]) == \
        counts["kept"]
    saved = downloads / f"{ident}.zip"  # and the browser saved it
    wait_for(driver, lambda d: saved.is_file() and zipfile.is_zipfile(saved), 30, f"download {saved}")

    # 7. the finished page, kept as a test artifact and as the README's picture
    for _ in range(2):  # the whole page in one picture (a resize can reflow it once)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1000, min(height + 140, 2400))
    screenshot = tmp_path / "serve-page.png"
    assert driver.save_screenshot(str(screenshot))
    shutil.copyfile(screenshot, SCREENSHOT)

    # 8. delete (confirmed in the dialog): gone from the page and from the API
    el(driver, "delete").click()
    wait_for(driver, expected.alert_is_present(), 10, "confirm dialog").accept()
    wait_for(driver, lambda d: f"deleted {ident}" in el(d, "notice").text, 30, "deleted notice")
    assert not el(driver, "job").is_displayed()
    assert ident not in [b.get_attribute("data-id") for b in el(driver, "identities").find_elements("tag name",
                                                                                                   "button")]
    assert http.get(f"/v1/identities/{ident}", headers=AUTH).status_code == 404
    print(f"\nbrowser flow: upload to done {upload_s:.1f} s, whole flow {time.time() - started:.1f} s; "
          f"{counts['kept']} kept, {counts['dropped']} dropped at threshold {THRESHOLD}; screenshot {screenshot}")
