"""The page of `aiayn serve` in a real browser: Debian's chromium driven by Playwright (PyPI).

`bash bootstrap.sh test` installs both (chromium with apt, playwright with pip; no browser is
downloaded). Set AIAYN_SCREENSHOT=path/to.png to keep a copy of the screenshot."""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, httpx) is not installed")
import httpx  # noqa: E402
from _serving import ARGS, CHROMIUM  # noqa: E402

pytestmark = pytest.mark.slow

SENTENCE = "And God said, Let there be light: and there was light."


@pytest.fixture(scope="module")
def playwright_api():
    if not CHROMIUM.is_file():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (bash bootstrap.sh test installs it with apt)")
    return pytest.importorskip("playwright.sync_api", reason="playwright is not installed (bash bootstrap.sh test installs it with pip)")


def test_page_translates_and_draws_the_attention_heat_map(playwright_api, trained_run, tmp_path):
    from _serving import LiveServer

    from aiayn.serve import ServeSettings, create_app

    app = create_app(trained_run, ServeSettings(), device="cpu")
    problems: list[str] = []
    with LiveServer(app) as server, playwright_api.sync_playwright() as pw:
        expected = httpx.post(f"{server.url}/v1/translate", json={"texts": [SENTENCE], "beam": 3}, timeout=60).json()["translations"][0]
        maps = httpx.post(f"{server.url}/v1/attention", json={"text": SENTENCE, "beam": 3}, timeout=60).json()
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS, viewport={"width": 1200, "height": 900}
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(server.url + "/")
            # waits go through selectors: the page's Content-Security-Policy forbids evaluating strings
            expect = playwright_api.expect
            expect(page.locator("#model-info")).to_contain_text("model ")
            page.fill("#source", SENTENCE)
            page.fill("#beam", "3")
            page.click("#translate")

            page.wait_for_selector('#heatmap:not([data-rows="0"])', timeout=60_000)
            expect(page.locator("#status")).to_contain_text("done in")
            assert page.text_content("#translation") == expected["text"]
            assert page.get_attribute("#error", "hidden") is not None  # no error shown

            rows, cols = len(maps["target"]), len(maps["source"])
            heatmap = page.locator("#heatmap")
            assert heatmap.get_attribute("data-rows") == str(rows) and heatmap.get_attribute("data-cols") == str(cols)
            assert page.locator("#heatmap .cell").count() == rows * cols
            assert page.locator("#heatmap .row-label").all_text_contents() == maps["target"]
            assert page.locator("#heatmap .col-label").all_text_contents() == maps["source"]

            # default view: the last layer, the average of its heads
            last = maps["cross"][-1]
            mean = [[sum(h[r][c] for h in last) / len(last) for c in range(cols)] for r in range(rows)]
            cell = page.locator('#heatmap .cell[data-row="1"][data-col="0"]')
            assert float(cell.get_attribute("data-weight")) == pytest.approx(mean[1][0], abs=1e-3)
            cell.hover()
            assert page.text_content("#hover-info").endswith(f"{mean[1][0]:.4f}")

            shot = tmp_path / "serve_page.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("AIAYN_SCREENSHOT"):
                shutil.copy(shot, os.environ["AIAYN_SCREENSHOT"])

            # one head of the first layer
            page.select_option("#layer", label="1")  # layer index 0
            page.select_option("#head", label="2")  # head index 1
            weights = [float(w) for w in page.locator("#heatmap .cell").evaluate_all("cells => cells.map(c => c.dataset.weight)")]
            want = [w for row in maps["cross"][0][1] for w in row]
            assert weights == pytest.approx(want, abs=1e-3)
            page.select_option("#head", label="average of heads")

            # an error from the server is shown on the page, not swallowed
            page.fill("#source", "x" * 1001)
            page.click("#translate")
            page.wait_for_selector("#error:not([hidden])")
            assert "1001 characters" in page.text_content("#error")
        finally:
            browser.close()
    assert not [p for p in problems if "413" not in p], problems  # the one expected failure is the 413 above
