"""The Docker image, built and run with podman, relays mail from the host to the sandbox upstream.

Needs (Debian 12, root): ``apt-get install -y --no-install-recommends podman runc mmdebstrap
uidmap slirp4netns fuse-overlayfs ca-certificates``. No registry is needed: the base image is
bootstrapped from Debian packages (mmdebstrap, else debootstrap) and cached by tag between runs.
Locally a missing tool skips the test; with CI=true it fails.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import poplib
import shutil
import smtplib
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from podman_tools import BASE_IMAGE, Podman, ensure_base_image

from relay.sandbox.oauth import DEFAULT_SCOPE
from relay.sandbox.world import SandboxWorld
from relay.secret import Secret
from relay.tokens.model import TokenSet
from relay.tokens.store import EncryptedFileStore, decode_key, generate_key

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
CONTAINER_UID = 10001  # the Dockerfile's `relay` user
MAILBOX = "ops@sandbox.test"
LOGIN = "ops-app"
PASSWORD = "container demo pw"
ADMIN_TOKEN = "container-admin-token-0123456789abcdef"
PROXY_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def _require_tools() -> None:
    missing = [tool for tool in ("podman",) if shutil.which(tool) is None]
    if shutil.which("mmdebstrap") is None and shutil.which("debootstrap") is None:
        missing.append("mmdebstrap (or debootstrap)")
    if os.geteuid() != 0:
        missing.append("root (rootful podman, chown of the volumes)")
    if missing:
        reason = f"container test needs: {', '.join(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def podman(tmp_path: Path) -> Podman:
    """A Podman runner writing its outputs under the test's temporary directory."""
    _require_tools()
    work = tmp_path / "podman"
    work.mkdir()
    return Podman(work)


@pytest.fixture
def sandbox_world(tmp_path: Path) -> Iterator[SandboxWorld]:
    """The sandbox upstream on the host's loopback (the container shares the host network)."""
    with SandboxWorld.start(tmp_path / "sandbox") as world:
        yield world


def _write_volumes(tmp_path: Path, world: SandboxWorld, smtp_port: int, pop3_port: int,
                   admin_port: int) -> tuple[Path, ...]:
    """Config dir (relay.yaml + sandbox CA), data dir (seeded token store), secrets dir (store key and
    admin token); the admin listener as in docs/docker/relay.yaml (all interfaces, bearer token)."""
    from relay.passwords import hash_password

    config_dir, data_dir, secrets_dir = (tmp_path / d for d in ("config", "data", "secrets"))
    for d in (config_dir, data_dir, secrets_dir):
        d.mkdir()
    shutil.copy(world.ca_file, config_dir / "sandbox-ca.pem")
    key = generate_key()
    (secrets_dir / "relay_store_key").write_text(key + "\n")
    (secrets_dir / "relay_admin_token").write_text(ADMIN_TOKEN + "\n")
    account = world.account_yaml(LOGIN, hash_password(PASSWORD), MAILBOX)
    for service in ("smtp", "pop3", "imap"):
        if isinstance(account.get(service), dict):
            account[service]["ca_file"] = "/config/sandbox-ca.pem"  # type: ignore[index]
    config = {
        "listen": {
            # Bound to all addresses, as in a container: plaintext AUTH only from the listed network.
            "smtp": {"enabled": True, "host": "0.0.0.0", "port": smtp_port, "tls": "none",
                     "allow_plaintext_auth_from": ["127.0.0.0/8"]},
            "pop3": {"enabled": True, "host": "0.0.0.0", "port": pop3_port, "tls": "none",
                     "allow_plaintext_auth_from": ["127.0.0.0/8"]},
        },
        "token_store": {"path": "/data/relay-tokens.enc", "key_env": None,
                        "key_file": "/run/secrets/relay_store_key"},
        "credentials": world.credentials_yaml("sandbox"),
        "accounts": {"ops": account},
        "limits": {"shutdown_grace_s": 10},
        "admin": {"host": "0.0.0.0", "port": admin_port,
                  "auth_token": "${file:/run/secrets/relay_admin_token}"},
    }
    (config_dir / "relay.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # The tokens `relay authorize ops` would have stored, written with the same key.
    store = EncryptedFileStore(data_dir / "relay-tokens.enc", decode_key(key, "test"))
    now = datetime.now(UTC)
    asyncio.run(store.put(TokenSet(
        account="ops", credentials="sandbox", access_token=Secret(world.oauth.issue_access_token(MAILBOX)),
        expires_at=now + timedelta(hours=1), refresh_token=Secret(world.oauth.issue_refresh_token(MAILBOX)),
        scopes=tuple(DEFAULT_SCOPE.split()), obtained_at=now)))
    for d in (config_dir, data_dir, secrets_dir):
        for path in (d, *d.iterdir()):
            os.chown(path, CONTAINER_UID, CONTAINER_UID)
    for secret in ("relay_store_key", "relay_admin_token"):
        (secrets_dir / secret).chmod(0o400)
    return config_dir, data_dir, secrets_dir


def _admin_get(port: int, path: str, token: str | None) -> tuple[int, str]:
    """GET ``path`` from the container's admin listener (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def _wait_for_greeting(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(64).startswith(b"220"):
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def test_image_builds_runs_relays_mail_and_reports_health(podman: Podman, sandbox_world: SandboxWorld,
                                                         tmp_path: Path) -> None:
    """The image builds, relays host SMTP/POP3 to the sandbox, is healthy and stops with exit code 0."""
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    base_how = ensure_base_image(podman)
    timings[f"base image ({base_how})"] = time.monotonic() - t0
    quirks = podman.apply_quirk_fixes_if_needed(BASE_IMAGE)

    tag = f"localhost/xoauth2-relay-test:{uuid.uuid4().hex[:8]}"
    build = ["build", "--format", "docker", "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}", "-t", tag]
    if PROXY_CA.exists():  # the corporate-proxy CA as a build secret (CONTAINERS.md)
        build += ["--secret", f"id=pip_cert,src={PROXY_CA}"]
    result = podman.run(*build, "-f", str(REPO / "Dockerfile"), str(REPO), timeout_s=900, check=True)
    timings["build"] = result.seconds
    image_id = podman.run("image", "inspect", "--format", "{{.Id}}", tag, check=True).stdout.strip()
    container_id = ""
    try:
        inspect = json.loads(podman.run("image", "inspect", tag, check=True).stdout)[0]
        healthcheck = inspect.get("Healthcheck") or (inspect.get("Config") or {}).get("Healthcheck") or {}
        assert "health" in " ".join(healthcheck.get("Test", [])), f"HEALTHCHECK lost: {healthcheck}"
        assert inspect["Config"]["User"] == "relay"

        smtp_port, pop3_port, admin_port = _free_port(), _free_port(), _free_port()
        config_dir, data_dir, secrets_dir = _write_volumes(tmp_path, sandbox_world, smtp_port, pop3_port,
                                                           admin_port)
        t0 = time.monotonic()
        run = podman.run("run", "-d", "--network", "host",
                         "-v", f"{config_dir}:/config:ro", "-v", f"{data_dir}:/data",
                         "-v", f"{secrets_dir}:/run/secrets:ro", tag, timeout_s=120, check=True)
        container_id = run.stdout.strip().splitlines()[-1]
        assert _wait_for_greeting(smtp_port, 60), podman.run("logs", container_id).stderr[-3000:]
        timings["start -> SMTP greets"] = time.monotonic() - t0

        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = MAILBOX, "someone@example.org", "through the container"
        msg.set_content("hello from the host\n")
        t0 = time.monotonic()
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.login(LOGIN, PASSWORD)
            client.send_message(msg)
        arrived = sandbox_world.smtp.wait_for_messages(1, timeout_s=10)
        timings["SMTP round trip"] = time.monotonic() - t0
        assert len(arrived) == 1 and arrived[0].user == MAILBOX
        assert b"Subject: through the container" in arrived[0].data

        sandbox_world.pop3.deliver(MAILBOX, b"Subject: waiting in the mailbox\r\n\r\nbody\r\n")
        pop = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
        pop.user(LOGIN)
        pop.pass_(PASSWORD)
        _resp, lines, _ = pop.retr(1)
        pop.quit()
        assert b"Subject: waiting in the mailbox" in lines

        # The admin page and readiness on the container's admin port, as the Docker example publishes it.
        status, page = _admin_get(admin_port, "/", ADMIN_TOKEN)
        assert status == 200 and "ops" in page and "valid" in page, page[:2000]
        assert ADMIN_TOKEN not in page
        assert _admin_get(admin_port, "/readyz", None)[0] == 401
        status, ready = _admin_get(admin_port, "/readyz", ADMIN_TOKEN)
        assert status == 200, ready

        health = podman.run("healthcheck", "run", container_id, timeout_s=60)
        assert health.returncode == 0, health.stdout + health.stderr
        direct = podman.run("exec", container_id, "relay", "health", "--config", "/config/relay.yaml")
        assert direct.returncode == 0 and "ready" in direct.stdout, direct  # asks the admin /readyz
        greetings = podman.run("exec", container_id, "relay", "health", "--greetings", "--config",
                               "/config/relay.yaml")
        assert greetings.returncode == 0 and "smtp" in greetings.stdout, greetings
        assert "ok" in greetings.stdout, greetings

        t0 = time.monotonic()
        podman.run("stop", "-t", "20", container_id, timeout_s=60, check=True)
        timings["graceful stop"] = time.monotonic() - t0
        exit_code = podman.run("inspect", "--format", "{{.State.ExitCode}}", container_id).stdout.strip()
        logs = podman.run("logs", container_id)
        output = logs.stdout + logs.stderr
        assert exit_code == "0", output[-3000:]
        assert "listener smtp" in output
        for secret in (PASSWORD, (secrets_dir / "relay_store_key").read_text().strip(), "sandbox-secret",
                       ADMIN_TOKEN):
            assert secret not in output
    finally:
        if container_id:
            podman.run("rm", "-f", "-t", "0", container_id, timeout_s=60)
        podman.run("rmi", "-f", image_id, timeout_s=120)
        summary = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        print(f"\ncontainer test timings: {summary}; quirk fixes: {quirks}")
