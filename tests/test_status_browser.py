"""The status page in a real browser: Debian's headless Chromium, driven by Playwright, against the
daemon (`promo-monitor run` as a subprocess) and the simulator.

Playwright never downloads a browser here: it launches /usr/bin/chromium through executable_path
(`make tools` installs it). Screenshots go to tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, async_playwright

from monitor.simulator import Simulator
from tests.support import Daemon, require_tool, write_config

ARTIFACTS = Path(__file__).parent / "artifacts"
HOSTILE = "<script>alert(1)</script>"
HOUR = 3600.0


@dataclass
class Watched:
    """What a page did that a person would notice: console errors, failed loads, dialogs."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_loads: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.console_errors.append(message.text)

        async def dialog(opened: Dialog) -> None:
            self.dialogs.append(opened.message)
            await opened.dismiss()

        page.on("console", console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on("requestfailed", lambda request: self.failed_loads.append(request.url))
        page.on(
            "response",
            lambda response: (
                self.failed_loads.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )
        page.on("dialog", dialog)

    def assert_quiet(self) -> None:
        assert self.console_errors == []
        assert self.page_errors == []
        assert self.failed_loads == []
        assert self.dialogs == []


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = require_tool("chromium")
    # As root Chromium refuses to start without --no-sandbox (CI runs as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=args)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Store:
    sim: Simulator
    failing: str  # has failed jobs
    stuck: str
    missing: str  # configured but not in the store: its polls fail with not_found


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    sim = Simulator(seed=11)
    now = sim.now()
    failing = sim.add_promotion(name="Summer sale 10% off")
    for n in range(3):
        sim.add_job(failing, status="completed", created_at=now - (5 - n) * HOUR)
    sim.add_job(failing, status="failed", error="codes limit exceeded", created_at=now - 2 * HOUR)
    export = sim.add_promotion(name="Black Friday 25%")
    sim.add_job(
        export,
        job_type="code_export",
        status="failed",
        error="export failed: storage unavailable (request id 9e7769b10f4205b4)",
        created_at=now - 5 * HOUR,
    )
    sim.add_job(export, status="completed", created_at=now - 6 * HOUR)
    stuck = sim.add_promotion(name="Welcome code")
    sim.add_job(stuck, status="completed", created_at=now - 9 * HOUR)
    sim.add_job(stuck, status="pending", created_at=now - 2 * HOUR)
    running = sim.add_promotion("rule_promotion", name="Loyalty reward")
    sim.add_job(running, status="completed", created_at=now - 3 * HOUR)
    sim.add_job(running, status="processing", created_at=now - 60)
    for name in ("Free shipping over $50", "Clearance bundle"):
        quiet = sim.add_promotion(name=name)
        sim.add_job(quiet, status="completed", created_at=now - 8 * HOUR)
        sim.add_job(quiet, job_type="code_export", status="completed", created_at=now - 7 * HOUR)
    await sim.start()
    yield Store(sim, failing, stuck, str(uuid.uuid4()))
    await sim.stop()


async def test_status_page_in_chromium(browser: Browser, store: Store, tmp_path: Path) -> None:
    sim = store.sim
    promotions = [{"id": p["id"], "kind": p["type"]} for p in sim.promotions()]
    config = write_config(tmp_path, sim, [*promotions, {"id": store.missing}])
    daemon = await Daemon.start(config)
    try:
        await daemon.wait_for("baseline_loaded", count=len(promotions))
        await daemon.wait_for("poll_failed", lambda e: e["promotion_id"] == store.missing)
        # A failure seen live, after the baseline:
        sim.add_job(
            store.failing,
            status="failed",
            error="Promotion code generation failed: database timeout after 30s",
        )
        await daemon.wait_for("job_failed")
        ARTIFACTS.mkdir(exist_ok=True)

        # Desktop, light: what an engineer sees after `kubectl port-forward`.
        context = await browser.new_context(
            viewport={"width": 1280, "height": 900}, color_scheme="light"
        )
        page = await context.new_page()
        seen = Watched()
        seen.attach(page)
        response = await page.goto(daemon.url + "/")
        assert response is not None
        assert response.status == 200
        await page.screenshot(path=ARTIFACTS / "status-page.png", full_page=True)
        assert await page.get_by_text("codes limit exceeded", exact=True).first.is_visible()
        assert await page.get_by_text("database timeout after 30s").first.is_visible()
        # What needs attention comes first: the promotion whose polls fail, then the stuck one.
        rows = page.locator("#promotions tr")
        assert store.missing in await rows.nth(1).inner_text()
        assert "Poll failing" in await rows.nth(1).inner_text()
        assert store.stuck in await rows.nth(2).inner_text()
        assert "Stuck" in await rows.nth(2).inner_text()
        poll_errors = await page.locator("#poll-errors").inner_text()
        assert "not_found" in poll_errors
        assert "the promotion is deleted" in poll_errors  # the hint
        seen.assert_quiet()

        # A hostile error text from the API is shown as text, and nothing runs.
        sim.add_job(store.failing, status="failed", error=HOSTILE)
        await daemon.wait_for("job_failed", lambda e: e["error"] == HOSTILE)
        await page.goto(daemon.url + "/")
        hostile = page.get_by_text(HOSTILE, exact=True)
        assert await hostile.count() >= 1
        assert await hostile.first.is_visible()
        assert await page.locator("script").count() == 0
        await page.screenshot(path=ARTIFACTS / "status-page-hostile.png", full_page=True)

        # One promotion, with all its jobs: follow the link as a person would.
        await page.locator(f'#promotions a[href="?promotion={store.failing}"]').click()
        await page.wait_for_url(f"**/?promotion={store.failing}")
        jobs = await page.locator("#jobs").inner_text()
        assert jobs.count("completed") == 3
        assert HOSTILE in jobs
        assert store.stuck not in await page.content()
        seen.assert_quiet()
        page_text = await page.content()
        await context.close()

        # Dark preference, on a phone: follows the system and never scrolls sideways.
        phone = await browser.new_context(
            viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True
        )
        page = await phone.new_page()
        seen = Watched()
        seen.attach(page)
        await page.goto(daemon.url + "/")
        background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 19, 24)"
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await page.screenshot(path=ARTIFACTS / "status-page-phone-dark.png", full_page=True)
        seen.assert_quiet()
        page_text += await page.content()
        await phone.close()
    finally:
        assert await daemon.stop() == 0
    secrets = [sim.client_secret, *sim.issued_tokens()]
    assert len(secrets) > 1
    for secret in secrets:
        assert secret not in page_text
