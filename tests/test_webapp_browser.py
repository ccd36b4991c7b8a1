"""A pathologist's visit in a real headless Chromium against `histopath serve` (gunicorn)."""

from __future__ import annotations

import pathlib
import re
import shutil
import time

import pytest
from serving_fixtures import (
    MIL_NAME,
    free_port,
    full_size_images,
    push_version,
    start_process,
    wait_for_http,
)

CHROMIUM = pathlib.Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


@pytest.mark.browser
def test_upload_shows_label_probability_and_heatmap(exported_models, shared_data, artifacts_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run `bash scripts/system-deps.sh` (make system-deps)")
    from playwright.sync_api import expect, sync_playwright

    serving_dir = tmp_path / "models"
    shutil.copytree(exported_models.mil, serving_dir / MIL_NAME / "1")
    port = free_port()
    web = start_process(
        ["serve", "--port", str(port), "--serving-dir", str(serving_dir), "--model-name", MIL_NAME],
        tmp_path / "webapp.log",
        env={
            "SECRET_KEY": "browser-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'webapp.sqlite3'}",
            "HISTOPATH_RELOAD_INTERVAL": "1",
        },
    )
    image = full_size_images(shared_data, 1)[0]
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(base_url + "/healthz", 120, web.process, web.log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(base_url + "/")
                page.get_by_label("Image file").set_input_files(str(image))
                page.get_by_role("button", name="Classify").click()

                expect(page.locator("#result-label")).to_have_text(re.compile(r"^(Benign|Malignant)$"), timeout=60_000)
                expect(page.locator("#result-probability")).to_have_text(re.compile(r"^\d{1,3}\.\d %$"))
                expect(page.locator("#result-model")).to_have_text(MIL_NAME)
                expect(page.locator("#result-version")).to_have_text("1")
                heatmap = page.get_by_role("img", name=re.compile("Attention heat-map"))
                expect(heatmap).to_be_visible()
                width, height = heatmap.evaluate("img => [img.naturalWidth, img.naturalHeight]")
                assert (width, height) == (640, 421)  # 700x460 shown at most 640 px wide (PIL thumbnail)
                expect(page.get_by_role("img", name=re.compile("Tile malignancy map"))).to_be_visible()
                original = page.get_by_role("img", name="The submitted image")
                assert original.evaluate("img => img.complete && img.naturalWidth") == 640
                page.screenshot(path=str(artifacts_dir / "webapp-result.png"), full_page=True)

                label = page.locator("#result-label").inner_text()
                page.get_by_role("link", name="Recent predictions").click()
                expect(page.locator("tbody tr")).to_have_count(1)
                expect(page.locator("tbody tr td.label-cell")).to_have_text(label)
                page.screenshot(path=str(artifacts_dir / "webapp-history.png"), full_page=True)

                # A newly pushed version is used without restarting the app.
                push_version(exported_models.mil_v2, serving_dir / MIL_NAME, 2)
                deadline = time.monotonic() + 60
                while True:
                    page.goto(base_url + "/")
                    page.get_by_label("Image file").set_input_files(str(image))
                    page.get_by_role("button", name="Classify").click()
                    expect(page.locator("#result-version")).to_be_visible(timeout=60_000)
                    if page.locator("#result-version").inner_text() == "2" or time.monotonic() > deadline:
                        break
                    time.sleep(1)
                expect(page.locator("#result-version")).to_have_text("2")
                expect(page.get_by_role("img", name=re.compile("Attention heat-map"))).to_be_visible()
            finally:
                browser.close()
    finally:
        web.stop()
