"""Driving the inbox and the widget the way a person does."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.hub.helpers import PASSWORD

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page


async def log_in(page: Page, base: str, email: str) -> None:
    await page.goto(f"{base}/inbox/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.locator("#app").wait_for(state="visible")
    await page.locator("#connection.live").wait_for()


async def open_widget(page: Page, base: str, path: str = "/") -> Locator:
    """The demo page with the widget, its panel opened; returns the panel."""
    await page.goto(f"{base}{path}")
    await page.get_by_role("button", name="Open chat").click()
    panel = page.get_by_role("dialog")
    await panel.wait_for(state="visible")
    return panel


async def visitor_says(page: Page, text: str) -> None:
    box = page.get_by_role("textbox", name="Write a message")
    await box.fill(text)
    await box.press("Enter")


def stored(panel: Locator) -> Locator:
    """The visitor's messages the hub has acknowledged (an unsent one is shown
    at once, without a message id, until then)."""
    return panel.locator(".m.contact[data-id]")
