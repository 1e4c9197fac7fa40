"""Every SMTP reply the relay itself sends, as named `SmtpReply` values (one module, no f-strings
elsewhere).

Replies that come from the upstream are passed on as the upstream's own `SmtpReply` (see
`relay.smtp.failures.client_reply_for_upstream`); everything here is ours. A reply that needs a
detail (an account name, a parse error) is a small function returning a value.
"""

from __future__ import annotations

from relay.smtp.reply import SmtpReply

# --- session --------------------------------------------------------------------------------
OK = SmtpReply.make(250, "2.0.0", "OK")
BYE = SmtpReply.make(221, "2.0.0", "Bye")
TOO_MANY_CONNECTIONS = SmtpReply.make(421, "4.7.0", "Too many connections, try again later")
LOCAL_ERROR = SmtpReply.make(451, "4.3.0", "Local error in processing, try again later")
LINE_TOO_LONG_COMMAND = SmtpReply.make(500, "5.5.2", "Line too long")

def helo(hostname: str) -> SmtpReply:
    """The reply to HELO (no extensions)."""
    return SmtpReply.make(250, None, hostname)


# --- AUTH -----------------------------------------------------------------------------------
AUTH_OK = SmtpReply.make(235, "2.7.0", "Authentication successful")
AUTH_INVALID = SmtpReply.make(535, "5.7.8", "Authentication credentials invalid")
AUTH_REQUIRED = SmtpReply.make(530, "5.7.0", "Authentication required")
AUTH_CANCELLED = SmtpReply.make(501, "5.7.0", "Authentication cancelled")
AUTH_MECHANISM_UNKNOWN = SmtpReply.make(504, "5.5.4", "Unrecognized authentication type")
AUTH_IN_TRANSACTION = SmtpReply.make(503, "5.5.1", "AUTH is not permitted during a mail transaction")
ENCRYPTION_REQUIRED = SmtpReply.make(538, "5.7.11",
                                     "Encryption required for requested authentication mechanism")


def auth_challenge(challenge_b64: str) -> SmtpReply:
    """``334 <base64 challenge>`` (an empty challenge for AUTH PLAIN's prompt)."""
    return SmtpReply.make(334, None, challenge_b64)

# --- MAIL / RCPT ----------------------------------------------------------------------------
SENDER_OK = SmtpReply.make(250, "2.1.0", "Sender OK")
"""A delayed MAIL (PIPELINING upstream): the upstream's verdict comes with the first RCPT."""
NULL_RECIPIENT = SmtpReply.make(501, "5.1.3", "The null address <> is not a valid recipient")
BAD_SENDER_ADDRESS = SmtpReply.make(553, "5.1.7", "The sender address is not valid UTF-8")
BAD_RECIPIENT_ADDRESS = SmtpReply.make(553, "5.1.3", "The recipient address is not valid UTF-8")
SMTPUTF8_UNSUPPORTED = SmtpReply.make(555, "5.6.7", "SMTPUTF8 is not supported by the upstream server")
EIGHTBITMIME_UNSUPPORTED = SmtpReply.make(554, "5.6.3",
                                          "8BITMIME is not supported by the upstream server")

# --- content --------------------------------------------------------------------------------
START_DATA = SmtpReply.make(354, None, "End data with <CR><LF>.<CR><LF>")
NEED_RCPT = SmtpReply.make(503, "5.5.1", "Error: need RCPT command")
DATA_SYNTAX = SmtpReply.make(501, "5.5.4", "Syntax: DATA")
TOO_BIG = SmtpReply.make(552, "5.3.4", "Message size exceeds fixed maximum message size")
LINE_TOO_LONG = SmtpReply.make(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6: 998 octets + CRLF)")
BARE_LINE_END = SmtpReply.make(554, "5.6.0", "Message refused: bare LF or bare CR in the content "
                               "(RFC 5321 2.3.8); end every line with CRLF")

# --- upstream and token failures (always 4xx: the client keeps the message) ------------------
TEMP_AUTH_FAILURE = SmtpReply.make(454, "4.7.0",
                                   "Temporary authentication failure upstream, try again later")
UPSTREAM_UNREACHABLE = SmtpReply.make(451, "4.4.1", "Upstream mail server unreachable, try again later")
UPSTREAM_CONNECTION_LOST = SmtpReply.make(451, "4.4.2", "Connection to the upstream mail server failed")
UPSTREAM_BUSY = SmtpReply.make(451, "4.3.2", "Too many concurrent upstream sessions, try again later")


def syntax_error(detail: object) -> SmtpReply:
    """501 5.5.2 for a command argument we refuse (control characters, bad base64 ...)."""
    return SmtpReply.make(501, "5.5.2", str(detail))


def account_cannot_send(account: str) -> SmtpReply:
    """550 for an account without an SMTP upstream."""
    return SmtpReply.make(550, "5.7.1", f"Account {account} is not configured to send mail")
