"""Real mail clients through the relay, each asserting what the sandbox upstream received.

Every row of `MATRIX` has a test here named ``test_<row.key>`` and a row in README.md's
compatibility table (`test_readme_table_matches_the_matrix`), so neither can drift. Compiled
clients (Go, Java) are built once per module; nodemailer is installed by .ci/run into
``.cache/node`` (the test installs it there itself when run locally and npm is reachable).
"""

from __future__ import annotations

import asyncio
import poplib
import smtplib
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import (
    CI,
    PASSWORD,
    POP3_MESSAGES,
    RCPT,
    SENDER,
    USERNAME,
    MatrixWorld,
    need,
    run,
)

ROOT = Path(__file__).resolve().parents[3]
PROGRAMS = Path(__file__).resolve().parent / "programs"
NODE_DIR = ROOT / ".cache" / "node"
ENV = {"RELAY_USER": USERNAME, "RELAY_PASSWORD": PASSWORD}


@dataclass(frozen=True)
class Row:
    """One client of the matrix, as the README table shows it."""

    key: str
    client: str
    version: str  # as tested: the Debian/npm/PyPI version
    auth: str
    tls: str
    result: str = "works"
    settings: str = "none"
    package: str | None = None  # the Debian package whose installed version must match


MATRIX = (
    Row("curl_smtp", "curl (smtp://, smtps://)", "7.88.1 (Debian 12)", "PLAIN, LOGIN", "STARTTLS, implicit",
        package="curl"),
    Row("curl_pop3", "curl (pop3://)", "7.88.1 (Debian 12)", "USER/PASS", "STLS", package="curl"),
    Row("s_nail", "s-nail (mailx)", "14.9.24", "PLAIN", "STARTTLS", package="s-nail"),
    Row("neomutt", "neomutt (batch mode)", "20220429", "PLAIN", "STARTTLS", package="neomutt"),
    Row("perl_net_smtp", "Perl Net::SMTP + Authen::SASL", "perl 5.36, Authen::SASL 2.16",
        "PLAIN, LOGIN", "STARTTLS"),
    Row("phpmailer", "PHP PHPMailer", "6.6.3 (PHP 8.2)", "PLAIN, LOGIN", "STARTTLS",
        package="libphp-phpmailer"),
    Row("go_net_smtp", "Go net/smtp", "Go 1.19", "PLAIN", "STARTTLS; none on localhost", "works",
        "none (Go's PlainAuth refuses plaintext unless the host name is localhost: use STARTTLS)"),
    Row("nodemailer", "Node.js nodemailer", "6.x (Node 20)", "PLAIN, LOGIN", "STARTTLS, implicit"),
    Row("jakarta_mail", "Java Jakarta Mail", "2.0.0 (OpenJDK 17)", "PLAIN, LOGIN", "STARTTLS",
        package="libjakarta-mail-java"),
    Row("python_smtplib", "Python smtplib / poplib", "Python 3.11", "PLAIN, LOGIN, USER/PASS",
        "STARTTLS, STLS, none"),
    Row("aiosmtplib", "Python aiosmtplib", "5.x", "PLAIN, LOGIN", "STARTTLS"),
    Row("swaks", "swaks", "20201014.0", "PLAIN, LOGIN", "STARTTLS", package="swaks"),
    Row("msmtp", "msmtp", "1.8.23", "PLAIN, LOGIN", "STARTTLS", package="msmtp"),
    Row("fetchmail", "fetchmail", "6.4.37", "USER/PASS", "STLS", package="fetchmail"),
    Row("getmail6", "getmail6", "6.18.11", "USER/PASS", "none (loopback)", package="getmail6"),
    Row("devices", "Devices: bare-LF writers, HELO-only scanners, LOGIN-prompt parsers (replayed)",
        "transcripts", "PLAIN, LOGIN", "none, TLS 1.0",
        "works", "listen.smtp.bare_lf: normalize (default); min_tls_version: \"1.0\" for TLS 1.0 devices"),
)


def _message_file(matrix: MatrixWorld, client: str) -> tuple[str, bytes, Path]:
    subject, data = matrix.message(client)
    path = matrix.work / f"{client}.eml"
    path.write_bytes(data)
    return subject, data, path


# --- curl ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("scheme", "mechanism"), [("smtp", "PLAIN"), ("smtp", "LOGIN"), ("smtps", "PLAIN")])
def test_curl_smtp(matrix: MatrixWorld, scheme: str, mechanism: str) -> None:
    """curl sends over STARTTLS (--ssl-reqd) or SMTPS with AUTH PLAIN/LOGIN; byte-exact upstream."""
    need("curl")
    subject, data, path = _message_file(matrix, f"curl-{scheme}-{mechanism}")
    port = matrix.smtp_port if scheme == "smtp" else matrix.smtps_port
    run(["curl", "-sS", "--ssl-reqd", "--cacert", str(matrix.cert_file),
         "--url", f"{scheme}://localhost:{port}", "--login-options", f"AUTH={mechanism}",
         "--user", f"{USERNAME}:{PASSWORD}", "--mail-from", SENDER, "--mail-rcpt", RCPT,
         "-T", str(path)])
    msg = matrix.arrived(subject)
    assert (msg.data, msg.mail_from, msg.rcpt_tos) == (data, SENDER, (RCPT,))


def test_curl_pop3(matrix: MatrixWorld) -> None:
    """curl lists and retrieves over STLS; the message is the upstream's, byte-exact."""
    need("curl")
    base = ["curl", "-sS", "--ssl-reqd", "--cacert", str(matrix.cert_file), "--user",
            f"{USERNAME}:{PASSWORD}"]
    listing = run([*base, f"pop3://localhost:{matrix.pop3_port}/"]).stdout
    assert listing.startswith(b"1 ")
    assert run([*base, f"pop3://localhost:{matrix.pop3_port}/1"]).stdout == POP3_MESSAGES[0]


# --- mail user agents ---------------------------------------------------------------------------

def _body_arrived(matrix: MatrixWorld, subject: str, body: bytes) -> None:
    msg = matrix.arrived(subject)
    assert b"\n" not in msg.data.replace(b"\r\n", b""), "bare LF reached the upstream"
    assert msg.data.split(b"\r\n\r\n", 1)[1] == body
    assert (msg.mail_from, msg.rcpt_tos) == (SENDER, (RCPT,))


def test_s_nail(matrix: MatrixWorld) -> None:
    """s-nail (mailx) with its built-in SMTP: STARTTLS, AUTH PLAIN; the body arrives byte-exact."""
    need("s-nail")
    subject = matrix.subject("s-nail")
    env = {**ENV, "HOME": str(matrix.work), "MAILRC": "/dev/null"}
    run(["s-nail", "-#", "-:/", "-Sv15-compat", "-Sttycharset=utf-8", "-Ssendcharsets=utf-8",
         f"-Smta=smtp://{USERNAME}:{PASSWORD.replace(' ', '%20')}@localhost:"
         f"{matrix.smtp_port}", "-Ssmtp-use-starttls", "-Ssmtp-auth=plain",
         f"-Stls-ca-file={matrix.cert_file}", "-Stls-ca-no-defaults", "-Ssendwait",
         "-r", SENDER, "-s", subject, RCPT], stdin=b"hello from s-nail\n.leading dot\n", env=env)
    _body_arrived(matrix, subject, b"hello from s-nail\r\n.leading dot\r\n")


def test_neomutt(matrix: MatrixWorld) -> None:
    """neomutt in batch mode with its SMTP client: STARTTLS required, AUTH PLAIN."""
    need("neomutt")
    subject = matrix.subject("neomutt")
    muttrc = matrix.work / "muttrc"
    muttrc.write_text(
        f'set smtp_url="smtp://{USERNAME}@localhost:{matrix.smtp_port}/"\n'
        f'set smtp_pass="{PASSWORD}"\nset smtp_authenticators="plain"\n'
        f'set ssl_starttls=yes\nset ssl_force_tls=yes\nset certificate_file="{matrix.cert_file}"\n'
        f'set from="{SENDER}"\nset use_from=yes\nset envelope_from=yes\nset record=""\n'
        'set charset="utf-8"\nset send_charset="utf-8"\n')
    run(["neomutt", "-n", "-F", str(muttrc), "-s", subject, RCPT],
        stdin=b"hello from neomutt\n", env={"HOME": str(matrix.work), "TERM": "dumb"})
    _body_arrived(matrix, subject, b"hello from neomutt\r\n")


# --- libraries ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_perl_net_smtp(matrix: MatrixWorld, mechanism: str) -> None:
    """Perl Net::SMTP: STARTTLS, AUTH via Authen::SASL; the raw message arrives byte-exact."""
    need("perl")
    if subprocess.run(["perl", "-MIO::Socket::SSL", "-MAuthen::SASL", "-e1"], check=False,
                      capture_output=True).returncode != 0:
        (pytest.fail if CI else pytest.skip)("libio-socket-ssl-perl/libauthen-sasl-perl missing")
    subject, data, path = _message_file(matrix, f"perl-{mechanism}")
    run(["perl", str(PROGRAMS / "send_net_smtp.pl"), str(matrix.smtp_port), str(matrix.cert_file),
         SENDER, RCPT, str(path), mechanism], env=ENV)
    assert matrix.arrived(subject).data == data


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_phpmailer(matrix: MatrixWorld, mechanism: str) -> None:
    """PHPMailer over STARTTLS: the upstream holds exactly the MIME message PHPMailer built."""
    need("php")
    if not Path("/usr/share/php/libphp-phpmailer/autoload.php").is_file():
        (pytest.fail if CI else pytest.skip)("libphp-phpmailer missing")
    subject = matrix.subject(f"phpmailer-{mechanism}")
    out = matrix.work / f"phpmailer-{mechanism}.eml"
    run(["php", str(PROGRAMS / "send_phpmailer.php"), str(matrix.smtp_port), str(matrix.cert_file),
         SENDER, RCPT, subject, mechanism, str(out)], env=ENV)
    # PHPMailer's SMTP::data() sends each line + CRLF, so a message ending in CRLF gains one empty
    # line on the wire: that is what it sent, and what must arrive.
    assert matrix.arrived(subject).data == out.read_bytes() + b"\r\n"


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go program, built once per module (GOCACHE in a temp dir; no module downloads)."""
    need("go")
    out = tmp_path_factory.mktemp("go")
    binary = out / "smtp_send"
    run(["go", "build", "-o", str(binary), str(PROGRAMS / "smtp_send.go")], timeout_s=300,
        env={"GOCACHE": str(out / "cache"), "GO111MODULE": "off", "GOFLAGS": "", "HOME": str(out)})
    return binary


def test_go_net_smtp(matrix: MatrixWorld, go_client: Path) -> None:
    """Go net/smtp PlainAuth: plaintext works for "localhost", is refused by Go itself for another
    host name, and works for that name after STARTTLS; byte-exact upstream."""
    _, _, path = _message_file(matrix, "go-refused")
    addr = f"127.0.0.1:{matrix.smtp_port}"
    subject, data, path = _message_file(matrix, "go-localhost")
    run([str(go_client), "plain", addr, "localhost", str(matrix.cert_file), SENDER, RCPT, str(path)], env=ENV)
    assert matrix.arrived(subject).data == data
    refused = subprocess.run([str(go_client), "plain", addr, "relay.example", str(matrix.cert_file),
                              SENDER, RCPT, str(path)], env={**ENV}, capture_output=True, timeout=30,
                             check=False)
    assert refused.returncode == 3 and b"unencrypted" in refused.stdout, refused
    subject, data, path = _message_file(matrix, "go-starttls")
    run([str(go_client), "starttls", addr, "relay.example", str(matrix.cert_file), SENDER, RCPT,
         str(path)], env=ENV)
    assert matrix.arrived(subject).data == data


@pytest.fixture(scope="module")
def nodemailer_dir() -> Path:
    """nodemailer in .cache/node (installed by .ci/run; locally installed here if npm can)."""
    need("node", "npm")
    if not (NODE_DIR / "node_modules" / "nodemailer").is_dir():
        result = subprocess.run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                                 "--prefer-offline", "nodemailer@6"], capture_output=True, timeout=300,
                                check=False)
        if result.returncode != 0:
            message = f"npm could not install nodemailer: {result.stderr[-500:]!r}"
            (pytest.fail if CI else pytest.skip)(message)
    return NODE_DIR


@pytest.mark.parametrize(("mechanism", "secure"), [("PLAIN", "0"), ("LOGIN", "0"), ("PLAIN", "1")])
def test_nodemailer(matrix: MatrixWorld, nodemailer_dir: Path, mechanism: str, secure: str) -> None:
    """nodemailer (raw message) over STARTTLS or SMTPS with AUTH PLAIN/LOGIN; byte-exact."""
    subject, data, path = _message_file(matrix, f"node-{mechanism}-{secure}")
    port = matrix.smtps_port if secure == "1" else matrix.smtp_port
    run(["node", str(PROGRAMS / "send_nodemailer.js"), str(port), str(matrix.cert_file), SENDER, RCPT,
         str(path), mechanism, secure], env={**ENV, "NODE_PATH": str(nodemailer_dir / "node_modules")})
    assert matrix.arrived(subject).data == data


JAKARTA_CLASSPATH = "/usr/share/java/jakarta-mail.jar:/usr/share/java/jakarta-activation.jar"


@pytest.fixture(scope="module")
def jakarta_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SendJakarta.java compiled once per module against Debian's Jakarta Mail."""
    need("javac", "java")
    if not Path("/usr/share/java/jakarta-mail.jar").is_file():
        (pytest.fail if CI else pytest.skip)("libjakarta-mail-java missing")
    out = tmp_path_factory.mktemp("java")
    run(["javac", "-cp", JAKARTA_CLASSPATH, "-d", str(out), str(PROGRAMS / "SendJakarta.java")],
        timeout_s=300)
    return out


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_jakarta_mail(matrix: MatrixWorld, jakarta_classes: Path, mechanism: str) -> None:
    """Jakarta Mail over STARTTLS with AUTH PLAIN/LOGIN: the parsed message goes out unchanged."""
    subject, data, path = _message_file(matrix, f"java-{mechanism}")
    run(["java", "-cp", f"{jakarta_classes}:{JAKARTA_CLASSPATH}", "SendJakarta", str(matrix.smtp_port),
         str(matrix.cert_file), SENDER, RCPT, str(path), mechanism], env=ENV)
    assert matrix.arrived(subject).data == data


def _trusting(matrix: MatrixWorld) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(matrix.cert_file))


@pytest.mark.parametrize("mode", ["starttls-plain", "starttls-login", "plaintext-login"])
def test_python_smtplib(matrix: MatrixWorld, mode: str) -> None:
    """smtplib: STARTTLS + PLAIN or LOGIN, and plaintext LOGIN on loopback; byte-exact."""
    subject, data, _ = _message_file(matrix, f"smtplib-{mode}")
    with smtplib.SMTP("localhost", matrix.smtp_port, timeout=20) as client:
        if mode.startswith("starttls"):
            client.starttls(context=_trusting(matrix))
        client.user, client.password = USERNAME, PASSWORD
        client.ehlo()
        mechanism = mode.split("-")[1]
        client.auth(mechanism.upper(), getattr(client, f"auth_{mechanism}"), initial_response_ok=True)
        client.sendmail(SENDER, [RCPT], data)
    assert matrix.arrived(subject).data == data


def test_python_smtplib_poplib(matrix: MatrixWorld) -> None:
    """poplib: STLS, USER/PASS, RETR gives the upstream's message byte-exact."""
    pop = poplib.POP3("localhost", matrix.pop3_port, timeout=20)
    try:
        pop.stls(context=_trusting(matrix))
        pop.user(USERNAME)
        pop.pass_(PASSWORD)
        _, lines, _ = pop.retr(2)
        assert b"\r\n".join(lines) + b"\r\n" == POP3_MESSAGES[1]
    finally:
        pop.quit()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_aiosmtplib(matrix: MatrixWorld, mechanism: str) -> None:
    """aiosmtplib: STARTTLS, AUTH PLAIN/LOGIN; byte-exact."""
    aiosmtplib = pytest.importorskip("aiosmtplib")
    subject, data, _ = _message_file(matrix, f"aiosmtplib-{mechanism}")

    async def send() -> None:
        client = aiosmtplib.SMTP(hostname="localhost", port=matrix.smtp_port, start_tls=True,
                                 tls_context=_trusting(matrix), timeout=20)
        async with client:
            await client.ehlo()  # RFC 3207: after STARTTLS; aiosmtplib's auth_* do not do it
            await getattr(client, f"auth_{mechanism.lower()}")(USERNAME, PASSWORD)
            await client.sendmail(SENDER, [RCPT], data)

    asyncio.run(send())
    assert matrix.arrived(subject).data == data


# --- command-line senders and fetchers ------------------------------------------------------------

@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks(matrix: MatrixWorld, mechanism: str) -> None:
    """swaks: STARTTLS, AUTH PLAIN/LOGIN; the data file arrives byte-exact."""
    need("swaks")
    subject, data, path = _message_file(matrix, f"swaks-{mechanism}")
    path.write_bytes(data[:-2])  # swaks ends the data with its own CRLF.CRLF
    run(["swaks", "--server", "127.0.0.1", "--port", str(matrix.smtp_port), "--tls",
         "--auth", mechanism, "--auth-user", USERNAME, "--auth-password", PASSWORD,
         "--from", SENDER, "--to", RCPT, "--data", f"@{path}", "--suppress-data"])
    assert matrix.arrived(subject).data == data


@pytest.mark.parametrize("mechanism", ["plain", "login"])
def test_msmtp(matrix: MatrixWorld, mechanism: str) -> None:
    """msmtp: STARTTLS trusting the relay's certificate, AUTH PLAIN/LOGIN; byte-exact."""
    need("msmtp")
    subject, data, _ = _message_file(matrix, f"msmtp-{mechanism}")
    run(["msmtp", "--host=localhost", f"--port={matrix.smtp_port}", "--tls=on", "--tls-starttls=on",
         f"--tls-trust-file={matrix.cert_file}", f"--auth={mechanism}", f"--user={USERNAME}",
         f"--passwordeval=echo '{PASSWORD}'", f"--from={SENDER}", RCPT], stdin=data,
        env={"HOME": str(matrix.work)})
    assert matrix.arrived(subject).data == data


def test_fetchmail(matrix: MatrixWorld) -> None:
    """fetchmail: STLS with certificate check, USER/PASS, keep; each message reaches its MDA."""
    need("fetchmail")
    rc = matrix.work / "fetchmailrc"
    out = matrix.work / "fetchmail-out"
    rc.write_text(f'poll localhost proto pop3 port {matrix.pop3_port} user "{USERNAME}" '
                  f'password "{PASSWORD}" sslproto tls1.2+ sslcertck sslcertfile "{matrix.cert_file}" '
                  f'keep fetchall mda "cat >> {out}"\n')
    rc.chmod(0o600)
    run(["fetchmail", "-f", str(rc), "--nosyslog", "--pidfile", str(matrix.work / "fetchmail.pid")],
        env={"HOME": str(matrix.work), "FETCHMAILHOME": str(matrix.work)})
    fetched = out.read_bytes().replace(b"\r\n", b"\n")
    for original in POP3_MESSAGES:
        assert original.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in fetched


def test_getmail6(matrix: MatrixWorld) -> None:
    """getmail6: USER/PASS on loopback into an external MDA; both messages arrive with their bodies."""
    need("getmail")
    out = matrix.work / "getmail-out"
    rc = matrix.work / "getmailrc"
    rc.write_text(f"[retriever]\ntype = SimplePOP3Retriever\nserver = 127.0.0.1\nport = {matrix.pop3_port}\n"
                  f"username = {USERNAME}\npassword = {PASSWORD}\n\n[destination]\ntype = MDA_external\n"
                  f"path = /bin/sh\narguments = (\"-c\", \"cat >> {out}\")\nallow_root_commands = true\n\n"
                  "[options]\nread_all = true\ndelete = false\n")
    run(["getmail", f"--getmaildir={matrix.work}", f"--rcfile={rc}"])
    got = out.read_bytes()
    for original in POP3_MESSAGES:
        assert original.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n") in got


# --- the README table -----------------------------------------------------------------------------

def render_table() -> str:
    """The README compatibility table, from MATRIX."""
    lines = ["| Client or device family | Version tested | AUTH | TLS | Result | Settings needed |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.client} | {r.version} | {r.auth} | {r.tls} | {r.result} | {r.settings} |"
              for r in MATRIX]
    return "\n".join(lines) + "\n"


def test_tested_versions_are_the_installed_ones() -> None:
    """Each Debian client's installed version is the one the table names (a distribution upgrade
    must update the table); packages not installed are the client tests' business."""
    for row in MATRIX:
        if row.package is None:
            continue
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", row.package],
                                capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout:
            assert row.version.split(" ")[0] in result.stdout, (row.package, result.stdout)


def test_readme_table_matches_the_matrix() -> None:
    """README.md holds exactly the table rendered from MATRIX, and every row has its test."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert render_table() in readme, ("README compatibility table is out of date; paste:\n"
                                      + render_table())
    names = set(globals())
    for row in MATRIX:
        assert row.key == "devices" or f"test_{row.key}" in names, row.key
