"""A pathologist calls a whole slide in a real headless Chromium against `histopath serve`
(gunicorn, the streaming upload, the job queue, OpenSeadragon): upload → job with its
progress → the answer and the zoomable viewer with the heat-map toggled over the slide.

The generated slide runs in the default run (about two minutes: the server and a separate
`histopath webapp slide_worker` each load TensorFlow, then a few hundred tiles are called).
The web processes run no slide worker there (`HISTOPATH_SLIDE_WORKERS=0`), so the page is
seen queued, then the worker command started, and the page's progress seen moving; the real
Aperio SVS (`wsi/cmu_small_region.svs`,
CC0) is an opt-in check (`HISTOPATH_REAL_SVS_BROWSER=1`, with the real data) and gives the
screenshot of docs/slides.md.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import time

import pytest
from serving_fixtures import MIL_NAME, TEST_PASSWORD, WEB_SECRET_KEY, start_process, web_app
from slide_samples import write_slide

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
USER = "dr-slides"


def _call_slide(base_url: str, slide: pathlib.Path, name: str, screenshot: pathlib.Path,
                while_queued=None) -> dict:
    """Signs in, uploads `slide`, follows its job and checks the viewer; returns what was seen.

    Args:
      while_queued: when given, the job must be seen queued first; then this is called (it
        starts a slide worker) and the progress must be seen counting tiles.
    """
    from playwright.sync_api import expect, sync_playwright

    seen: dict = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base_url + "/")
            page.get_by_label("User name").fill(USER)
            page.get_by_label("Password").fill(TEST_PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("link", name="Whole slides").click()
            page.get_by_label("Slide file").set_input_files(str(slide))
            page.get_by_label("Name in your history").fill(name)
            page.get_by_role("button", name="Upload and call").click()
            page.wait_for_url(re.compile(r"/slides/\d+/$"), timeout=120_000)
            seen["job_url"] = page.url
            if while_queued is not None:
                expect(page.locator("#job-state")).to_have_text("Queued")
                expect(page.locator("#job-progress")).to_be_visible()
                seen["worker"] = while_queued()
                expect(page.locator("#job-tiles")).to_have_text(re.compile(r"^\d+ of \d+ tiles$"), timeout=300_000)
                expect(page.locator("#job-state")).to_have_text("Calling the slide")
                seen["progress"] = page.locator("#job-progress").get_attribute("value")
            expect(page.locator("#result-label")).to_be_visible(timeout=600_000)  # the page polls, then reloads
            status = page.request.get(page.url + "status").json()
            assert status["state"] == "done" and status["percent"] == 100
            assert status["tiles_done"] == status["tiles_total"] > 0
            seen["label"] = page.locator("#result-label").inner_text()
            expect(page.locator("#result-model")).to_have_text(MIL_NAME)

            viewer = page.locator("#slide-viewer")
            expect(viewer).to_have_attribute("data-overlay", "loaded", timeout=60_000)
            page.wait_for_function("() => !document.querySelector('#slide-viewer canvas') ? false : true")
            page.wait_for_timeout(1500)  # the tiles of the first view are drawn
            shown = viewer.screenshot()
            page.screenshot(path=str(screenshot), full_page=True)
            page.get_by_label(re.compile("Heat-map")).uncheck()
            expect(viewer).to_have_attribute("data-heatmap", "hidden")
            page.wait_for_timeout(1000)
            hidden = viewer.screenshot()
            assert shown != hidden  # the overlay was drawn, and the toggle took it away
            page.get_by_label(re.compile("Heat-map")).check()
            expect(viewer).to_have_attribute("data-heatmap", "shown")

            # The Deep Zoom tiles come from the slide, for this user only.
            dzi = page.request.get(page.url + "slide.dzi")
            assert dzi.status == 200 and "Width=" in dzi.text()
            other = browser.new_page()
            assert other.request.get(page.url + "slide.dzi", max_redirects=0).status == 302  # signed out
            page.get_by_role("link", name="All slides").click()
            expect(page.locator("tbody tr td.name-cell").first).to_have_text(name)
        finally:
            browser.close()
    return seen


def _slide_env(tmp_path: pathlib.Path) -> dict:
    return {"HISTOPATH_SLIDE_DIR": str(tmp_path / "slides"), "HISTOPATH_SLIDE_MODEL_MPP": "4",
            "HISTOPATH_SLIDE_TILE_PX": "50", "HISTOPATH_RELOAD_INTERVAL": "1"}


def _serve(tmp_path: pathlib.Path, exported_models, **env):
    serving_dir = tmp_path / "models"
    shutil.copytree(exported_models.mil, serving_dir / MIL_NAME / "1")
    return web_app(tmp_path, serving_dir=serving_dir, users=((USER, "pathologist"),),
                   env={**_slide_env(tmp_path), **env})


@pytest.mark.browser
def test_generated_slide_upload_job_viewer_and_heatmap_toggle(exported_models, artifacts_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run `bash scripts/system-deps.sh` (make system-deps)")
    slide = write_slide(tmp_path / "generated-case.tif", width=2000, height=1500)
    started, workers = time.monotonic(), []

    def start_worker():
        environment = {**_slide_env(tmp_path), "SECRET_KEY": WEB_SECRET_KEY,
                       "DATABASE_URL": f"sqlite:///{web['database']}", "HISTOPATH_MODEL_NAME": MIL_NAME,
                       "HISTOPATH_SERVING_DIR": str(tmp_path / "models")}
        workers.append(start_process(["webapp", "slide_worker"], tmp_path / "slide-worker.log", env=environment))
        return workers[-1]

    with _serve(tmp_path, exported_models, HISTOPATH_SLIDE_WORKERS="0") as web:
        try:
            seen = _call_slide(web["url"], slide, "generated case", artifacts_dir / "webapp-slide-generated.png",
                               while_queued=start_worker)
        finally:
            for worker in workers:
                worker.stop()
        assert re.fullmatch(r"Benign|Malignant|Not sure — needs a pathologist's review", seen["label"])
        log = web["log"].read_text()
    assert "Traceback" not in log, log[-3000:]
    worker_log = workers[0].log.read_text()
    assert "waiting for queued slide jobs" in worker_log and "Traceback" not in worker_log, worker_log[-3000:]
    assert not list((tmp_path / "slides" / "incoming").iterdir())
    print(f"generated slide: upload to answer and viewer in {time.monotonic() - started:.0f} s")


@pytest.mark.browser
def test_real_svs_upload_job_viewer_and_heatmap_toggle(exported_models, shared_data, artifacts_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run `bash scripts/system-deps.sh` (make system-deps)")
    if os.environ.get("HISTOPATH_REAL_SVS_BROWSER") != "1":
        pytest.skip("opt-in: HISTOPATH_REAL_SVS_BROWSER=1 calls the real SVS in the browser")
    svs = shared_data / "wsi" / "cmu_small_region.svs"
    if not svs.is_file():
        pytest.skip(f"{svs} is not here")
    started = time.monotonic()
    with _serve(tmp_path, exported_models) as web:
        seen = _call_slide(web["url"], svs, "CMU small region", artifacts_dir / "webapp-slide-viewer.png")
        log = web["log"].read_text()
    assert "Traceback" not in log, log[-3000:]
    assert seen["label"]
    print(f"real SVS: upload to answer and viewer in {time.monotonic() - started:.0f} s")
