"""A real headless Chromium (Debian's) logs in as an attendee and runs a cell in JupyterLab."""

from __future__ import annotations

import shutil

import pytest

from harness import ARTIFACTS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        pg = context.new_page()
        pg.set_default_timeout(120_000)
        yield pg
        browser.close()


def test_attendee_logs_in_and_runs_a_cell_in_jupyterlab(hub, page):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    name, password, _ = hub.new_attendee("web")
    ARTIFACTS.mkdir(exist_ok=True)

    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.screenshot(path=str(ARTIFACTS / "browser-1-login.png"))
    page.click("input[type=submit], button[type=submit]")

    # Spawn-pending page, then JupyterLab's launcher.
    page.wait_for_url(f"**/user/{name}/lab**", timeout=240_000)
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
    cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
    cell.wait_for()
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    cell.click()
    page.keyboard.type("import theano; print('answer', 6 * 7)")
    output = page.locator(".jp-OutputArea-output").filter(has_text="answer 42")
    # A fresh notebook can report "idle" a moment before its kernel
    # connection takes requests; a run sent then is dropped (the prompt stays
    # "[ ]"). Like a person would, run the cell again if nothing happened.
    for attempt in range(4):
        cell.click()
        page.keyboard.press("Control+Enter")
        try:
            output.wait_for(timeout=30_000)
            break
        except PlaywrightTimeout:
            page.screenshot(path=str(ARTIFACTS / f"browser-retry-{attempt}.png"))
    output.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "browser-2-lab-cell.png"))
    assert "answer 42" in output.inner_text()
