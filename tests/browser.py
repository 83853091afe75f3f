"""A real Chromium for the browser tests: Debian's ``chromium`` package driven
by Playwright for Python (never a downloaded browser). Missing, the tests skip
locally and fail in CI (``HUB_REQUIRE_SERVICES``), like the other services.
Screenshots go to ``artifacts/screenshots/`` (or ``$HUB_SCREENSHOTS``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.services import REPO, unavailable

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

CHROMIUM = os.environ.get("HUB_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("HUB_SCREENSHOTS") or REPO / "artifacts" / "screenshots")
# No GPU, no sandbox (CI runs as root), and nothing that reaches the network.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    path = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    if path is None:
        unavailable("Chromium", FileNotFoundError(f"{CHROMIUM} (apt-get install chromium, or set HUB_CHROMIUM)"))
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError as exc:
        unavailable("Playwright for Python", exc)
        raise
    # The machine is shared and busy: waiting longer costs nothing when things
    # go well, and these are waits for a state, never timing assertions.
    expect.set_options(timeout=20_000)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=path, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(target))
    return target


def watch_for_trouble(page: Page, problems: list[str]) -> None:
    """Collects script errors and dialogs (an injected alert() would show here)."""
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    async def refuse(dialog: object) -> None:
        problems.append(f"dialog: {getattr(dialog, 'message', dialog)}")
        await dialog.dismiss()  # type: ignore[attr-defined]

    page.on("dialog", refuse)


async def block_site_storage(context: BrowserContext) -> None:
    """What a browser set to block site data does: every access to
    localStorage and sessionStorage throws."""
    await context.add_init_script(
        """for (const name of ["localStorage", "sessionStorage"]) {
            Object.defineProperty(window, name, { configurable: true,
                get() { throw new DOMException("The operation is insecure.", "SecurityError"); } });
        }"""
    )
