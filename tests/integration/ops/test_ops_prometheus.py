"""A real Prometheus server scrapes the admin listener every second; the counters match the mail sent."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from ops_helpers import (
    ADMIN_TOKEN,
    OpsSetup,
    enable_admin,
    free_port,
    require_program,
    send_mail,
    wait_until,
)


class Prometheus:
    """`prometheus` on a loopback port with a 1 s scrape of one target (bearer token)."""

    def __init__(self, binary: str, directory: Path, target_port: int) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "xoauth2-relay", "scrape_interval": "1s", "scrape_timeout": "1s",
                "authorization": {"type": "Bearer", "credentials": ADMIN_TOKEN},
                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            }],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (directory / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.log_path = directory / "prometheus.log"

    def api(self, path: str, **params: str) -> dict[str, object]:
        """GET an HTTP API path; the decoded JSON."""
        url = f"http://127.0.0.1:{self.port}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def ready(self) -> bool:
        """True once /-/ready answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            if self.proc.poll() is not None:
                raise AssertionError(self.log_path.read_text(errors="replace")[-3000:]) from None
            return False

    def value(self, query: str) -> float | None:
        """The single value of an instant query (None when it has no result)."""
        result = self.api("/api/v1/query", query=query)["data"]["result"]  # type: ignore[index]
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        """Stop the server."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


DASHBOARD = Path(__file__).resolve().parents[3] / "docs" / "grafana" / "xoauth2-relay.json"


def _check_dashboard_queries(server: Prometheus) -> None:
    """Every query of the Grafana dashboard is valid PromQL and finds data in this Prometheus."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty = []
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"].replace("$account", ".*")
            answer = server.api("/api/v1/query", query=expr)
            assert answer["status"] == "success", (panel["title"], expr, answer)
            if not answer["data"]["result"]:  # type: ignore[index]
                empty.append(panel["title"])
    # The state panels have data at once (rates need more scrapes; pool, POP3, refreshes saw none).
    for title in ("Accounts needing re-authorization", "Access token time left", "Open sessions"):
        assert title not in empty, empty


@pytest.fixture
def prometheus_binary() -> str:
    """Debian's prometheus."""
    return require_program("prometheus", "prometheus")


def test_prometheus_scrapes_the_counters_of_the_mail_sent(ops: OpsSetup, serve, prometheus_binary: str,
                                                          tmp_path: Path) -> None:
    """Three messages and one refused login through the relay: Prometheus's query API shows them."""
    ops.seed("ops", "ops@sandbox.test")
    ops.smtp_port, ops.pop3_port = free_port(), free_port()
    admin_port = enable_admin(ops)
    proc = serve(ops.write())
    proc.wait_listening()
    proc.wait_for(f"admin listener on http://127.0.0.1:{admin_port}")
    server = Prometheus(prometheus_binary, tmp_path, admin_port)
    try:
        wait_until(server.ready, timeout_s=30, what="prometheus to be ready")
        for _ in range(3):
            send_mail(proc.ports["smtp"], "ops-app", "ops@sandbox.test", "x@sandbox.test", "0123456789\r\n")
        import smtplib

        with smtplib.SMTP("127.0.0.1", proc.ports["smtp"], timeout=30) as client, \
                pytest.raises(smtplib.SMTPAuthenticationError):
            client.ehlo()
            client.user, client.password = "ops-app", "wrong password"
            client.auth("PLAIN", client.auth_plain)  # one attempt (login() would try LOGIN too)
        delivered = 'xoauth2relay_messages_total{account="ops",outcome="delivered"}'
        wait_until(lambda: server.value(delivered) == 3.0, timeout_s=30, what="3 delivered messages")
        wait_until(lambda: server.value('xoauth2relay_local_auth_failures_total{protocol="smtp"}') == 1.0,
                   timeout_s=30, what="one local auth failure")
        wait_until(lambda: server.value('xoauth2relay_sessions_total{protocol="smtp",outcome="ok"}') == 3.0,
                   timeout_s=30, what="three ok sessions")
        sent_bytes = server.value('xoauth2relay_message_bytes_total{account="ops",outcome="delivered"}')
        assert sent_bytes is not None and sent_bytes > 3 * 12
        assert server.value('xoauth2relay_needs_reauthorization{account="ops"}') == 0.0
        assert server.value('up{job="xoauth2-relay"}') == 1.0
        assert server.value('xoauth2relay_message_seconds_count') == 3.0
        _check_dashboard_queries(server)
    finally:
        server.close()
