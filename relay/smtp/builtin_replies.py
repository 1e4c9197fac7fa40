"""aiosmtpd's own replies, completed: RFC 3463 enhanced status codes on its built-in errors, and
the pre-RFC 2554 ``250-AUTH=`` EHLO line old clients look for. Pure; used by `relay.smtp.session`.
"""

from __future__ import annotations

import re

# Built-in aiosmtpd replies without an enhanced status code get this one (by reply code). Only the
# codes aiosmtpd uses for errors and the exact plain "250 OK"/"221 Bye": EHLO lines must stay bare.
_ENHANCED_FOR_CODE = {500: "5.5.2", 501: "5.5.2", 502: "5.5.1", 503: "5.5.1", 504: "5.5.4",
                      552: "5.3.4", 555: "5.5.4"}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_REWRITES = {
    "250 OK": "250 2.0.0 OK",
    "221 Bye": "221 2.0.0 Bye",
    "500 Command line too long": "500 5.5.2 Line too long",
    "552 Error: message size exceeds fixed maximum message size":
        "552 5.3.4 Message size exceeds fixed maximum message size",
}


def add_enhanced_code(status: str) -> str:
    """Give an aiosmtpd built-in error reply its RFC 3463 enhanced status code."""
    if status in _REWRITES:
        return _REWRITES[status]
    if len(status) < 4 or status[3] != " " or _HAS_ENHANCED.match(status):
        return status
    code = int(status[:3]) if status[:3].isascii() and status[:3].isdigit() else 0
    enhanced = _ENHANCED_FOR_CODE.get(code)
    return f"{status[:4]}{enhanced} {status[4:]}" if enhanced else status


def with_old_style_auth(responses: list[str]) -> list[str]:
    """Add ``250-AUTH=LOGIN PLAIN`` after ``250-AUTH LOGIN PLAIN``: the pre-RFC 2554 form that old
    Outlook-era and embedded clients parse instead (Postfix's ``broken_sasl_auth_clients``)."""
    out = []
    for line in responses:
        out.append(line)
        if line.startswith("250-AUTH "):
            out.append("250-AUTH=" + line[len("250-AUTH "):])
    return out
