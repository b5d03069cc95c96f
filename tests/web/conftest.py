"""Fixtures of the browser app's tests: more users, orders, and websocket connections."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.db import connection, connections
from django.test import Client

from oms_site import roles
from orders.models import Order
from tests import factories as f


@pytest.fixture
def trader_other(other_desk: Any) -> Any:
    """A trader of the other desk (sees pm_b's account, not pm_a's)."""
    user = f.UserFactory(username="trader_b", role=roles.TRADER)
    other_desk.traders.add(user)
    return user


def make_order(*, account: Any, instrument: Any, created_by: Any, **fields: Any) -> Order:
    """An approved 100-share limit buy written straight to the table (no services involved)."""
    values: dict[str, Any] = {
        "side": "buy",
        "quantity": Decimal("100"),
        "order_type": "limit",
        "limit_price": Decimal("100.00"),
        "time_in_force": "day",
        "status": "approved",
        "leaves_qty": Decimal("100"),
        "compliance_outcome": "pass",
    }
    values.update(fields)
    order = Order.objects.create(
        account=account, instrument=instrument, created_by=created_by, **values
    )
    order.refresh_from_db()
    return order


def session_cookie(user: Any) -> str:
    """The `sessionid` of a fresh browser session logged in as the user."""
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


# --- a real ASGI server and a real browser -------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BROWSER_PASSWORD = "browser-pass-123"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def asgi_server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[str]:
    """uvicorn serving oms_site.asgi against the test database; yields its base URL.

    pytest-django's live_server is WSGI only (no websockets), hence a real ASGI server. Tests that
    use it need transaction=True so the server's connections see their committed rows.
    """
    with django_db_blocker.unblock():
        db_name = connection.settings_dict["NAME"]
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db_name}",
        CSRF_TRUSTED_ORIGINS=base,
        SERVE_STATIC="1",
        LOG_LEVEL="WARNING",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "oms_site.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=settings.BASE_DIR,
        env=env,
    )
    try:
        # Start-up (Django set-up, ASGI lifespan) took 14-24 s on a loaded 2-core machine.
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def page(asgi_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh headless chromium page on the ASGI server (Debian's chromium, via Playwright).

    Playwright's sync API runs an event loop in this thread while it is open, so it is started
    per test (never for the session: later tests would inherit the loop) and ORM calls from the
    test body are allowed alongside it; anything that publishes events runs in `in_thread`.
    """
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(
            base_url=asgi_server, viewport={"width": 1440, "height": 860}, locale="en-GB"
        )
        context.set_default_timeout(5000)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.js_errors = errors
        try:
            yield pg
        finally:
            context.close()
            browser.close()
            # ORM calls made while Playwright's loop ran got their own connection; close it
            # here, or the test database cannot be dropped at the end of the session.
            connections.close_all()


def set_browser_password(user: Any) -> None:
    """Give the user a password the server (with its production hashers) accepts."""
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    hasher = PBKDF2PasswordHasher()
    # Few iterations: this is a test password, and each login costs one check.
    user.password = hasher.encode(BROWSER_PASSWORD, hasher.salt(), iterations=1000)
    user.save(update_fields=["password"])


def login(page: Any, user: Any) -> None:
    """Log in through the login page as a person would."""
    page.goto("/accounts/login/")
    page.fill("input[name=username]", user.get_username())
    page.fill("input[name=password]", BROWSER_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector('[data-testid="username"]')


def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ORM work that publishes after commit in a plain thread (no event loop in it)."""

    def run() -> Any:
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()
