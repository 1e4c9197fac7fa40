"""The one exception tree of xoauth2-relay.

Every error a user can cause says what is wrong and how to fix it, naming the setting, account or
input. Lower-layer errors (OSError, ssl.SSLError, httpx.HTTPError, yaml.YAMLError,
cryptography's InvalidTag, binascii.Error ...) are translated into these at module boundaries.

    RelayError
    ├── ConfigError                 the YAML (or a value it references) is invalid
    ├── TokenStoreError             the encrypted token store cannot be read or written
    ├── OAuthError                  talking to the OAuth provider failed
    │   ├── AuthorizationNeeded     an operator must run `relay authorize ACCOUNT`
    │   ├── TokenRefreshFailed      transient: network, 5xx, timeout (retried with backoff)
    │   └── AuthorizeFlowError      the one-time authorize flow ended without tokens
    │       ├── AuthorizeTimeout    nobody completed the sign-in in time
    │       ├── AuthorizeDenied     the user (or provider) declined consent
    │       └── AuthorizeStateMismatch  the redirect's state did not match (possible CSRF)
    ├── UpstreamError               talking to the upstream SMTP/POP3 server failed
    │   ├── UpstreamUnavailable     connect, TLS, timeout, dropped connection (temporary)
    │   │   └── UpstreamBusy        every pooled session of the account stayed busy (the cap)
    │   ├── UpstreamAuthRejected    the upstream refused the XOAUTH2 login
    │   ├── UpstreamProtocolError   the upstream said something we cannot parse
    │   └── GraphError              Microsoft Graph answered with an error (status, code, wait)
    ├── SpoolError                  the durable spool cannot take or keep a message
    │   ├── SpoolFull               spool.max_bytes / max_messages reached, disk full (452 4.3.1)
    │   └── SpoolCorrupt            a spool file cannot be read: moved aside, reported
    └── ProtocolInputError          a client sent bad input (bad base64, control characters ...)

`UpstreamError.reply` carries the upstream's own reply as an `UpstreamReply` value (code, enhanced
code, text), so it is passed on and matched without parsing a message string.
"""

from __future__ import annotations

from dataclasses import dataclass


class RelayError(Exception):
    """Root of every error the relay raises on purpose."""

    exit_code: int = 1


class ConfigError(RelayError):
    """The configuration is invalid; ``path`` is the YAML path (``accounts.sales.credentials``).

    ``problems`` holds every (path, message) found, so `relay check-config` can print them all.
    """

    exit_code = 2

    def __init__(self, path: str, message: str, problems: list[tuple[str, str]] | None = None):
        self.path = path
        self.message = message
        self.problems = problems if problems is not None else [(path, message)]
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"{p}: {m}" if p else m for p, m in self.problems]
        return "\n".join(lines)


class TokenStoreError(RelayError):
    """The token store cannot be read or written (wrong key, corrupt file, permissions)."""

    exit_code = 3


class OAuthError(RelayError):
    """Base for errors while obtaining or refreshing tokens."""

    def __init__(self, message: str, *, account: str | None = None, provider_error: str | None = None):
        self.account = account
        self.provider_error = provider_error
        super().__init__(message)


class AuthorizationNeeded(OAuthError):
    """The account has no usable refresh token; the fix is `relay authorize ACCOUNT`."""

    exit_code = 4


class TokenRefreshFailed(OAuthError):
    """A transient failure (network, HTTP 5xx, timeout); retrying later may succeed."""

    exit_code = 5


class AuthorizeFlowError(OAuthError):
    """The interactive authorize flow ended without tokens (timeout, denied, state mismatch)."""

    exit_code = 6


class AuthorizeTimeout(AuthorizeFlowError):
    """Nobody completed the sign-in before the timeout (or the device code expired)."""

    exit_code = 7


class AuthorizeDenied(AuthorizeFlowError):
    """The user or the provider declined consent (``access_denied``)."""

    exit_code = 8


class AuthorizeStateMismatch(AuthorizeFlowError):
    """The redirect carried a ``state`` other than the one we sent: possibly a forged request."""

    exit_code = 9


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """An upstream server's reply as a value, for any protocol.

    ``code`` is the SMTP reply code (``"535"``) or the POP3/IMAP status (``"-ERR"``, ``"NO"``);
    ``enhanced_code`` the RFC 3463 code (``"5.7.8"``) or the POP3/IMAP response code
    (``"SYS/TEMP"``, ``"AUTHENTICATIONFAILED"``); ``text`` the reply's text (for POP3/IMAP the
    whole text after the status, ``[response code]`` included).
    """

    code: str
    enhanced_code: str | None
    text: str

    def one_line(self) -> str:
        """The reply on one line, as the upstream sent it (for logs and messages)."""
        if not self.code.isdigit() or self.enhanced_code is None:  # POP3/IMAP: code in the text
            return f"{self.code} {self.text}".rstrip()
        return f"{self.code} {self.enhanced_code} {self.text}".rstrip()

    def __str__(self) -> str:
        return self.one_line()


class UpstreamError(RelayError):
    """Base for errors talking to the upstream mail server.

    ``reply`` is the upstream's own reply (an `UpstreamReply`) when there was one, so it can be
    passed on and matched without parsing a message string.
    """

    def __init__(self, message: str, *, account: str | None = None,
                 reply: UpstreamReply | None = None):
        self.account = account
        self.reply = reply
        super().__init__(message)


class UpstreamUnavailable(UpstreamError):
    """Connect failure, TLS failure, timeout or dropped connection: temporary."""


class UpstreamBusy(UpstreamUnavailable):
    """Every upstream session the pool allows for the account stayed in use: try again later."""


class UpstreamAuthRejected(UpstreamError):
    """The upstream refused our XOAUTH2 login (token rejected, SMTP AUTH disabled ...)."""


class UpstreamProtocolError(UpstreamError):
    """The upstream sent a reply we cannot parse or did not expect."""


class GraphError(UpstreamError):
    """Microsoft Graph refused a request: ``status`` (HTTP), ``code`` (Graph's error code) and,
    when throttled, ``retry_after_s``; ``reply`` holds them as an `UpstreamReply` value."""

    def __init__(self, message: str, *, status: int, code: str | None = None,
                 retry_after_s: float | None = None, account: str | None = None,
                 reply: UpstreamReply | None = None):
        self.status = status
        self.code = code
        self.retry_after_s = retry_after_s
        super().__init__(message, account=account, reply=reply)


class ProtocolInputError(RelayError):
    """A client sent input we must refuse (invalid base64, control characters in a login ...)."""


class SpoolError(RelayError):
    """The durable spool cannot take or keep a message (full, disk error, corrupt file)."""


class SpoolFull(SpoolError):
    """``spool.max_bytes`` / ``spool.max_messages`` reached, or the disk is full: ``452 4.3.1``."""


class SpoolCorrupt(SpoolError):
    """A spool file cannot be read or decrypted; it is moved aside, never delivered."""
