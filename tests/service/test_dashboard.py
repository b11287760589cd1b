"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright): sign in
with a token, see the runs, open a run's charts, watch them update live, smooth, log scale,
compare two runs. Set CRUCIBLE_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh the pictures
(docs/dashboard.png and docs/dashboard-runs.png)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from crucible.testing import ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def _require_browser() -> None:
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append("chromium (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright)")
    if missing:
        reason = "the dashboard test needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + ": in CI it must run")
        pytest.skip(reason)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    _require_browser()
    process = ServerProcess(tmp_path)
    process.start()
    yield process
    process.stop()


def post(server: ServerProcess, run_id: str, metric: str, steps: range, scale: float) -> None:
    metrics = [
        {"metric": metric, "value": scale * (1.0 + 4.0 / (1 + s / 10)) + 0.1 * (s % 7), "step": s}
        for s in steps
    ]
    response = httpx.post(
        f"{server.url}/api/v1/metrics/batch",
        json={"run_id": run_id, "metrics": metrics},
        headers={"Authorization": f"Bearer {server.token}"},
    )
    assert response.status_code == 200, response.text


def test_dashboard_signs_in_charts_updates_live_and_compares(server: ServerProcess) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)  # a loaded CI machine may take a while to paint
    post(server, "baseline", "train/loss", range(100), 1.0)
    post(server, "baseline", "eval/accuracy", range(0, 100, 10), 0.1)
    post(server, "lr-3e-4", "train/loss", range(80), 0.8)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/")

            # A wrong token is refused; the real one signs in.
            page.fill("#token", "crc_wrong")
            page.click("#login-form button")
            expect(page.locator("#login-error")).to_contain_text("refused")
            page.fill("#token", server.read_only_token)
            page.click("#login-form button")

            row = page.locator("tr[data-run='baseline']")
            expect(row).to_contain_text("running")
            expect(row).to_contain_text("train/loss")
            expect(page.locator("tr[data-run='lr-3e-4']")).to_be_visible()

            # One chart per metric, with every stored point.
            row.locator("a").click()
            loss = page.locator('.chart[data-metric="train/loss"]')
            expect(loss).to_have_attribute("data-points", "100")
            expect(page.locator('.chart[data-metric="eval/accuracy"]')).to_have_attribute(
                "data-points", "10"
            )
            expect(loss.locator("canvas")).to_have_count(1)
            expect(page.locator("#connection")).to_have_attribute("data-live", "1")

            # Live: points posted now reach the open chart over the WebSocket.
            post(server, "baseline", "train/loss", range(100, 130), 1.0)
            expect(loss).to_have_attribute("data-points", "130")
            post(server, "baseline", "grad_norm", range(5), 1.0)  # a new metric: a new chart
            expect(page.locator('.chart[data-metric="grad_norm"]')).to_have_attribute(
                "data-points", "5"
            )

            page.locator("#smoothing").fill("0.6")
            expect(page.locator("#smoothing-value")).to_have_text("0.60")
            page.check("#log-scale")
            expect(loss).to_have_attribute("data-points", "130")  # rebuilt on a log axis

            expect(loss).to_have_attribute("data-scale", "log")

            # Zoom: dragging across the plot narrows the x range; double-click restores it.
            def x_span() -> float:
                return float(loss.get_attribute("data-x-max") or "nan") - float(
                    loss.get_attribute("data-x-min") or "nan"
                )

            full = x_span()
            assert full >= 129
            box = loss.locator(".u-over").bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + 50)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + 50, steps=5)
            page.mouse.up()
            assert x_span() < full / 2
            loss.locator(".u-over").dblclick()
            assert x_span() == full

            # Compare two runs on one chart; the list refreshes itself and keeps the ticks.
            page.goto(server.url + "/#/")
            page.check("tr[data-run='baseline'] .pick")
            post(server, "late-run", "train/loss", range(3), 1.0)
            expect(page.locator("tr[data-run='late-run']")).to_be_visible(timeout=10_000)
            expect(page.locator("tr[data-run='baseline'] .pick")).to_be_checked()
            page.check("tr[data-run='lr-3e-4'] .pick")
            screenshot = os.environ.get("CRUCIBLE_DASHBOARD_SCREENSHOT")
            if screenshot:  # the runs list too, next to the main picture
                page.screenshot(path=screenshot.replace(".png", "-runs.png"))
            page.click("#compare")
            overlay = page.locator('.chart[data-metric="train/loss"]')
            expect(overlay).to_have_attribute("data-points", "210")
            expect(overlay.locator(".u-legend")).to_contain_text("lr-3e-4")
            expect(overlay.locator(".u-legend")).to_contain_text("baseline")
            page.locator("#smoothing").fill("0.8")
            expect(page.locator("#smoothing-value")).to_have_text("0.80")
            post(server, "lr-3e-4", "train/loss", range(80, 100), 0.8)
            expect(overlay).to_have_attribute("data-points", "230")

            if screenshot:
                page.screenshot(path=screenshot, full_page=True)
            assert errors == []
        finally:
            browser.close()
