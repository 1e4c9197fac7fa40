"""The admin page in a real headless Chromium (Selenium): log in, authorize against the sandbox,
send a test message, revoke; CSRF, cookies and bad input refused properly."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_helpers import ADMIN_TOKEN, OpsSetup, enable_admin, free_port, require_program, wait_until

SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "images" / "admin-page.png"


@pytest.fixture
def browser() -> Iterator[object]:
    """Headless Chromium driven by chromedriver (Debian's chromium and chromium-driver)."""
    require_program("chromium", "chromium")
    driver_path = require_program("chromedriver", "chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=900,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _request(port: int, method: str, path: str, *, body: dict[str, str] | None = None,
             cookie: str | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    conn.request(method, path, urllib.parse.urlencode(body or {}), headers)
    response = conn.getresponse()
    result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    conn.close()
    return result


def _login(port: int) -> tuple[str, str]:
    """Log in over plain HTTP: (cookie header, CSRF token of the page)."""
    status, headers, _ = _request(port, "POST", "/login", body={"token": ADMIN_TOKEN})
    assert status == 303
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    page = _request(port, "GET", "/", cookie=cookie)[2]
    csrf = re.search(r"name=csrf value='([^']+)'", page)
    assert csrf
    return cookie, csrf[1]


def test_page_authorize_send_revoke_in_chromium(ops: OpsSetup, serve, browser, tmp_path: Path) -> None:
    """Login, an account needing authorization, Authorize through the sandbox, a test message that
    arrives in the sandbox, Revoke; the screenshot for the README is taken on the way."""
    from selenium.webdriver.common.by import By

    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    port = enable_admin(ops)
    proc = serve(ops.write())
    proc.wait_for(f"admin listener on http://127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    driver = browser
    driver.get(base + "/")
    assert driver.current_url.endswith("/login")
    driver.find_element(By.NAME, "token").send_keys("wrong-token-wrong")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(lambda: "wrong token" in driver.page_source, what="the refused login")
    driver.find_element(By.NAME, "token").send_keys(ADMIN_TOKEN)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(lambda: "account-ops" in driver.page_source, what="the admin page")
    card = driver.find_element(By.ID, "account-ops")
    assert "not authorized" in card.text and "relay authorize ops" in card.text

    card.find_element(By.XPATH, ".//button[text()='Authorize']").click()  # -> sandbox -> /callback -> /
    wait_until(lambda: "Authorized ops" in driver.page_source, what="the authorized flash")
    card = driver.find_element(By.ID, "account-ops")
    assert "valid" in card.text and "not authorized" not in card.text

    card.find_element(By.NAME, "to").send_keys("someone@sandbox.test")
    card.find_element(By.XPATH, ".//button[text()='Send test message']").click()
    wait_until(lambda: "Sent to someone@sandbox.test" in driver.page_source, what="the sent flash")
    assert any(m.rcpt_tos == ("someone@sandbox.test",) and b"admin page" in m.data
               for m in ops.world.smtp.messages())
    shot = tmp_path / "admin-page.png"
    driver.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("RELAY_UPDATE_SCREENSHOT") == "1":  # refresh the README's picture on purpose only
        shutil.copyfile(shot, SCREENSHOT)

    driver.find_element(By.ID, "account-ops").find_element(By.XPATH, ".//button[text()='Revoke']").click()
    wait_until(lambda: "Forgot the tokens of ops" in driver.page_source, what="the revoked flash")
    assert "not authorized" in driver.find_element(By.ID, "account-ops").text
    for secret in [*ops.secrets(), ADMIN_TOKEN]:
        assert secret not in driver.page_source


def test_page_refuses_missing_csrf_cookie_and_bad_input(ops: OpsSetup, serve) -> None:
    """No cookie: 401 / redirect to login; no CSRF: 403; unknown account 404; huge field and bad
    address: an error message; a replayed callback state: 400; security headers on every page."""
    ops.seed("ops", "ops@sandbox.test")
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    port = enable_admin(ops)
    proc = serve(ops.write())
    proc.wait_for(f"admin listener on http://127.0.0.1:{port}")
    status, headers, _ = _request(port, "GET", "/")
    assert (status, headers["location"]) == (303, "/login")
    assert _request(port, "POST", "/accounts/ops/revoke", body={"csrf": "x"})[0] == 401
    cookie, csrf = _login(port)
    status, headers, page = _request(port, "GET", "/", cookie=cookie)
    assert status == 200 and headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert "script-src" not in headers["content-security-policy"] and "'unsafe-inline'" not in page
    assert "default-src 'none'" in headers["content-security-policy"] and "<script" not in page
    assert _request(port, "POST", "/accounts/ops/revoke", cookie=cookie)[0] == 403
    assert _request(port, "POST", "/accounts/ops/revoke", body={"csrf": "wrong"}, cookie=cookie)[0] == 403
    assert _request(port, "POST", "/accounts/nobody/revoke", body={"csrf": csrf}, cookie=cookie)[0] == 404
    huge = {"csrf": csrf, "to": "a" * 100_000}
    assert _request(port, "POST", "/accounts/ops/test", body=huge, cookie=cookie)[0] == 413  # over 64 KB
    big = {"csrf": csrf, "to": "a" * 5000 + "@x.test"}
    status, headers, _ = _request(port, "POST", "/accounts/ops/test", body=big, cookie=cookie)
    assert status == 303
    assert "give one email address" in _request(port, "GET", "/", cookie=cookie)[2]
    assert _request(port, "GET", "/accounts/ops/test", cookie=cookie)[0] == 405

    status, headers, _ = _request(port, "POST", "/accounts/ops/authorize", body={"csrf": csrf}, cookie=cookie)
    assert status == 303 and headers["location"].startswith(ops.world.oauth.authorize_url)
    sandbox = urllib.parse.urlsplit(headers["location"])
    conn = http.client.HTTPConnection(sandbox.hostname, sandbox.port, timeout=30)
    conn.request("GET", f"{sandbox.path}?{sandbox.query}")
    callback = conn.getresponse().getheader("Location")
    conn.close()
    assert callback and callback.startswith(f"http://127.0.0.1:{port}/callback?")
    path = callback[len(f"http://127.0.0.1:{port}"):]
    first = _request(port, "GET", path, cookie=cookie)
    assert first[0] == 303
    replay = _request(port, "GET", path, cookie=cookie)
    assert replay[0] == 400 and "already used" in replay[2] and "Traceback" not in replay[2]
    forged = _request(port, "GET", "/callback?state=forged&code=x")
    assert forged[0] == 400
    wait_until(lambda: proc.proc.poll() is None, what="relay still running")


def test_page_device_code_account_shows_the_code_and_gets_authorized(ops: OpsSetup, serve) -> None:
    """A device-code account: Authorize shows the user code and URL; once the sandbox approves it,
    the background poll stores the grant and the page says valid."""
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    port = enable_admin(ops)
    ops.extra["credentials"] = ops.world.credentials_yaml("sandbox", flow="device_code")
    ops.world.oauth.set_device_interval(1)
    proc = serve(ops.write())
    proc.wait_for(f"admin listener on http://127.0.0.1:{port}")
    cookie, csrf = _login(port)
    assert _request(port, "POST", "/accounts/ops/authorize", body={"csrf": csrf}, cookie=cookie)[0] == 303
    page = _request(port, "GET", "/", cookie=cookie)[2]
    code = re.search(r"<span class=code>([^<]+)</span>", page)
    assert code and ops.world.oauth.device_authorization_url.rsplit("/", 1)[0] in page
    assert ops.world.oauth.approve_device(code[1], "ops@sandbox.test")
    wait_until(lambda: "(authorized)" in _request(port, "GET", "/", cookie=cookie)[2],
               what="the device grant")
    assert ">valid<" in _request(port, "GET", "/", cookie=cookie)[2]
