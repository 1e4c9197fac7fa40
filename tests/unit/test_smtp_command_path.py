"""relay.smtp.command_path: the plain MAIL/RCPT fast path agrees with aiosmtpd's own parsing."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP

from relay.smtp.command_path import _PLAIN_MAIL, _PLAIN_RCPT, plain_address

ARGS = [
    "FROM:<a@example.com>", "from:<a@example.com>", "From: <a.b+c@mail.example.com>",
    "FROM:\t<a@b>", "FROM:<a@b> SIZE=10", "FROM:<a@b> BODY=8BITMIME", "FROM:<>", "FROM:<a@b",
    "FROM:a@b", 'FROM:<"quoted name"@b>', "FROM:<a@[127.0.0.1]>", "FROM:<a..b@c>", "FROM:<.a@c>",
    "FROM:<a@b.>", "FROM:<a@-b>", "FROM:<é@b>", "FROM:<a@b> (comment)", "FROM:<a@b>  x",
    "FROM<a@b>", "FROMX:<a@b>", "FROM: <a@b>", "FROM:<@r1,@r2:a@b>", "FROM:<a b@c>",
    "TO:<x@y.z>", "to:<x@y>", "TO: <x@y>", "TO:<x@y> NOTIFY=NEVER", "TO:<>", "TO:<postmaster>",
    "TO:<x@y>>", "TO:<<x@y>", "T0:<x@y>", "TO:<x@y.z\u00a0>", "\u017from:<a@b>", "TO:<x@\u212ay>",
]


def _aiosmtpd(arg: str, keyword: str) -> tuple[str | None, str | None] | None:
    """What aiosmtpd's smtp_MAIL/RCPT derive from ``arg``: (address, parameters), or None when the
    keyword does not match."""
    smtp = SMTP.__new__(SMTP)
    smtp.local_part_limit = 0
    rest = smtp._strip_command_keyword(keyword, arg)
    if rest is None:
        return None
    return smtp._getaddr(rest)


@pytest.mark.parametrize("arg", ARGS)
def test_fast_path_takes_only_what_aiosmtpd_reads_the_same_way(arg: str) -> None:
    """Whenever the fast path takes an argument, aiosmtpd reads the same address and no parameters."""
    for pattern, keyword in ((_PLAIN_MAIL, "FROM:"), (_PLAIN_RCPT, "TO:")):
        fast = plain_address(arg, pattern)
        if fast is not None:
            assert _aiosmtpd(arg, keyword) == (fast, "")


def test_the_usual_forms_take_the_fast_path() -> None:
    """What real clients send (any case, a space after the colon) is taken."""
    assert plain_address("FROM:<a.b+c@mail.example.com>", _PLAIN_MAIL) == "a.b+c@mail.example.com"
    assert plain_address("from: <a@b>", _PLAIN_MAIL) == "a@b"
    assert plain_address("To:<x@y.z>", _PLAIN_RCPT) == "x@y.z"
    assert plain_address("FROM:<a@b> SIZE=1", _PLAIN_MAIL) is None
    assert plain_address("FROM:<>", _PLAIN_MAIL) is None
    assert plain_address(None, _PLAIN_RCPT) is None


def test_pushed_replies_get_enhanced_codes_and_their_budget_kind() -> None:
    """aiosmtpd's built-ins get enhanced codes; 4xx/5xx (not 421) are wasted, 235 is progress."""
    from relay.smtp.command_path import _PLAIN, _PROGRESS, _WASTED, _pushed

    assert _pushed("503 Error: need MAIL command", "utf-8") == (
        b"503 5.5.1 Error: need MAIL command\r\n", _WASTED)
    assert _pushed("235 2.7.0 Authentication successful", "utf-8")[1] == _PROGRESS
    assert _pushed("421 4.7.0 closing", "utf-8")[1] == _PLAIN
    assert _pushed("250 OK", "ascii") == (b"250 2.0.0 OK\r\n", _PLAIN)
    with pytest.raises(UnicodeEncodeError):
        _pushed("250 caf\u00e9", "ascii")
