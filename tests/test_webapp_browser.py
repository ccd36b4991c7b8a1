"""Pathologists and an auditor in a real headless Chromium against `histopath serve`
(gunicorn): sign in, classify, see one's own history (not a colleague's); the auditor sees
everyone's."""

from __future__ import annotations

import pathlib
import re
import shutil
import time

import pytest
from serving_fixtures import (
    MIL_NAME,
    TEST_PASSWORD,
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


def _sign_in(page, base_url: str, username: str) -> None:
    from playwright.sync_api import expect

    page.goto(base_url + "/")  # signed out: sent to the sign-in page
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(TEST_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signed-in-user")).to_have_text(username)


def _classify_until_version(page, base_url: str, image: pathlib.Path, version: str, name: str = "") -> None:
    """Classifies `image` again until the answer comes from the pushed `version` (the app
    swaps it in without a restart), within a minute."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + 60
    while True:
        page.goto(base_url + "/")
        page.get_by_label("Image file").set_input_files(str(image))
        if name:
            page.get_by_label("Name in your history").fill(name)
        page.get_by_role("button", name="Classify").click()
        expect(page.locator("#result-version")).to_be_visible(timeout=60_000)
        if page.locator("#result-version").inner_text() == version or time.monotonic() > deadline:
            break
        time.sleep(1)
    expect(page.locator("#result-version")).to_have_text(version)


@pytest.mark.browser
def test_sign_in_classify_and_private_histories(exported_models, shared_data, artifacts_dir, tmp_path):
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run `bash scripts/system-deps.sh` (make system-deps)")
    from playwright.sync_api import expect, sync_playwright

    from model_exports import export_tiny_mil

    from histopath.models.exported import NOT_SURE_TEXT

    serving_dir = tmp_path / "models"
    shutil.copytree(exported_models.mil, serving_dir / MIL_NAME / "1")
    not_sure_model = export_tiny_mil(tmp_path / "not-sure" / "export", seed=7, abstention_band={"low": 0.3, "high": 0.7})
    port = free_port()
    env = {
        "SECRET_KEY": "browser-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'webapp.sqlite3'}",
        "HISTOPATH_RELOAD_INTERVAL": "1",
        "USER_PASSWORD": TEST_PASSWORD,
    }
    for username, role in (("dr-first", "pathologist"), ("dr-second", "pathologist"), ("auditor", "auditor")):
        adduser = start_process(["webapp", "adduser", username, "--role", role, "--password-env", "USER_PASSWORD"],
                                tmp_path / f"adduser-{username}.log", env=env)
        assert adduser.process.wait(timeout=300) == 0, adduser.log.read_text()
    web = start_process(
        ["serve", "--port", str(port), "--serving-dir", str(serving_dir), "--model-name", MIL_NAME],
        tmp_path / "webapp.log",
        env=env,
    )
    image = full_size_images(shared_data, 1)[0]
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_for_http(base_url + "/healthz", 120, web.process, web.log)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                _sign_in(page, base_url, "dr-first")
                page.get_by_label("Image file").set_input_files(str(image))
                page.get_by_label("Name in your history").fill("case-first-17")
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
                page.get_by_role("link", name="My predictions").click()
                expect(page.locator("tbody tr")).to_have_count(1)
                expect(page.locator("tbody tr td.label-cell")).to_have_text(label)
                expect(page.locator("tbody tr td.name-cell")).to_have_text("case-first-17")
                page.screenshot(path=str(artifacts_dir / "webapp-history.png"), full_page=True)

                # A newly pushed version is used without restarting the app.
                push_version(exported_models.mil_v2, serving_dir / MIL_NAME, 2)
                _classify_until_version(page, base_url, image, "2")
                expect(page.get_by_role("img", name=re.compile("Attention heat-map"))).to_be_visible()

                # Version 3: version 1's weights with a "not sure" band around its threshold. The
                # same image (probability near 0.5) is now "not sure", with the model's leaning.
                push_version(not_sure_model, serving_dir / MIL_NAME, 3)
                _classify_until_version(page, base_url, image, "3", name="case-first-18")
                expect(page.locator("#result-label")).to_have_text(NOT_SURE_TEXT)
                expect(page.locator("#not-sure-note")).to_contain_text(re.compile(r"it leans (benign|malignant)"))
                page.screenshot(path=str(artifacts_dir / "webapp-not-sure.png"), full_page=True)
                page.get_by_role("link", name="My predictions").click()
                expect(page.locator("tbody tr td.label-cell").first).to_contain_text(NOT_SURE_TEXT)
                first_count = page.goto(base_url + "/history/") and page.locator("tbody tr").count()
                page.get_by_role("button", name="Sign out").click()
                expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

                # A colleague sees none of it; the auditor sees everything, with who asked.
                _sign_in(page, base_url, "dr-second")
                page.get_by_role("link", name="My predictions").click()
                expect(page.get_by_text("No predictions yet.")).to_be_visible()
                expect(page.get_by_text("case-first-17")).to_have_count(0)
                page.get_by_role("button", name="Sign out").click()
                _sign_in(page, base_url, "auditor")
                expect(page.get_by_role("link", name="Classify an image")).to_have_count(0)
                page.get_by_role("link", name="All predictions").click()
                expect(page.locator("tbody tr")).to_have_count(first_count)
                expect(page.locator("tbody tr td.user-cell").first).to_have_text("dr-first")
                expect(page.get_by_text("case-first-17")).to_be_visible()
                page.screenshot(path=str(artifacts_dir / "webapp-audit-history.png"), full_page=True)
            finally:
                browser.close()
    finally:
        web.stop()
