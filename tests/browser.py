"""A real browser on the stack's UI: Debian's Chromium driven by Playwright.

Shared by tests/test_ui.py and scripts/screenshot. No browser is downloaded:
Playwright drives the system Chromium (`apt-get install -y chromium`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, Response

from stack import ROOT

CHROMIUM = Path(os.environ.get("MLFLOW_UI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "tests" / ".artifacts" / "ui"
DOCS_IMG = ROOT / "docs" / "img"
VIEWPORT = {"width": 1440, "height": 900}
TIMEOUT_MS = 60_000  # shared 2-core machines: the UI can take a while

# Console errors that are not the stack's: each entry says why.
BENIGN_CONSOLE_ERRORS = (
    # Chromium itself raises this (an ErrorEvent with no error object, hence
    # "null") when a ResizeObserver callback changes layout and the remaining
    # notifications move to the next frame: the "deliver resize loop error"
    # step of the ResizeObserver spec. MLflow's own layout code (main.js)
    # triggers it while it sizes tables and panels (seen on the runs table
    # and the run page, not on every load). The text is not in MLflow's
    # bundle, it names no URL and follows no request; every test still
    # asserts that the same page had no failed request and no other error,
    # so no stack fault (auth, proxy, artifact store) can hide behind it.
    "null ResizeObserver loop completed with undelivered notifications.",
)


def launch(pw: Playwright) -> Browser:
    if not CHROMIUM.exists():
        raise RuntimeError(
            f"Chromium not found at {CHROMIUM}: the UI tests need Debian's browser "
            "(`apt-get install -y chromium`; .ci/run installs it), or set MLFLOW_UI_CHROMIUM"
        )
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@dataclass
class Watch:
    """Everything that went wrong on a page: console errors, uncaught
    exceptions, HTTP errors and requests that never got an answer."""

    page: Page
    problems: list[str] = field(default_factory=list)
    benign: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.problems.append(f"uncaught exception: {exc}"))
        self.page.on("response", self._response)
        self.page.on("requestfailed", self._request_failed)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        if msg.text in BENIGN_CONSOLE_ERRORS:
            self.benign.append(msg.text)
        else:
            self.problems.append(f"console error: {msg.text} ({msg.location.get('url', '')})")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def _request_failed(self, request: Request) -> None:
        self.problems.append(f"request failed ({request.failure}): {request.method} {request.url}")


# Chromium fails every request in flight with this error when the host's
# network configuration changes: here, whenever any Docker network or
# container interface on the machine comes or goes (other stacks, other
# tests). It is raised by the browser, never sent by a server.
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"
ATTEMPTS = 3


def visit(browser: Browser, base_url: str, credentials: tuple[str, str], check: Callable[[Page], None]) -> None:
    """Run `check` (navigate, assert, screenshot) on a fresh signed-in page,
    then assert the page logged no error and no request failed.

    An attempt whose requests were cut by NETWORK_CHANGED says nothing about
    the stack: it is discarded, with everything it logged, and retried in a
    fresh browser context, at most ATTEMPTS times. Any other problem fails
    at once.
    """
    for attempt in range(1, ATTEMPTS + 1):
        context = browser.new_context(
            base_url=base_url,
            # "always": send the credentials up front, as API clients do,
            # instead of after a 401 challenge.
            http_credentials={"username": credentials[0], "password": credentials[1], "send": "always"},
            viewport=VIEWPORT,
        )
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        watch = Watch(page)
        error: BaseException | None = None
        try:
            check(page)
        except Exception as e:  # judged below, once we know whether the network changed
            error = e
        finally:
            context.close()
        cut = [p for p in watch.problems if NETWORK_CHANGED in p]
        if cut:
            print(f"attempt {attempt}/{ATTEMPTS} discarded: the host network changed during the load ({cut[0]})")
            continue
        if error is not None:
            if watch.problems:
                error.add_note("the page also logged:\n" + "\n".join(watch.problems))
            raise error
        assert watch.problems == [], "the page logged errors or failed requests:\n" + "\n".join(watch.problems)
        if watch.benign:
            print(f"allow-listed console errors (see BENIGN_CONSOLE_ERRORS): {watch.benign}")
        return
    raise AssertionError(f"{ATTEMPTS} page loads in a row were cut by {NETWORK_CHANGED}: are networks churning?")


def close_assistant(page: Page) -> None:
    """Close MLflow 3.17's assistant side panel (open by default) if it is shown."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count() and close.first.is_visible():
        close.first.click()
        close.first.wait_for(state="hidden", timeout=TIMEOUT_MS)


def screenshot(page: Page, name: str, docs: bool = False) -> Path:
    """Save a screenshot under tests/.artifacts/ui/ and say where; with
    `docs`, also copy it to docs/img/ (scripts/screenshot)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    if docs:
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        target = DOCS_IMG / f"{name}.png"
        shutil.copyfile(path, target)
        print(f"screenshot for the docs: {target}")
    return path
