"""Bare LF handling, pure: the DATA normalizer, the EHLO AUTH= line and POP3's bare-LF decision."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pop3.protocol import NEED_DATA, Pop3Protocol, Reply
from relay.smtp.builtin_replies import with_old_style_auth
from relay.smtp.dataframe import DataFramer, DataProblem, LineEndNormalizer, count_bare_lf

_pieces = st.sampled_from([b"\r", b"\n", b".", b"\r\n", b".\n", b"\n.\n", b"a", b"xy ", b".."])
_content = st.lists(_pieces, max_size=40).map(b"".join)


def _normalize_in_chunks(data: bytes, size: int) -> bytes:
    norm = LineEndNormalizer()
    return b"".join(norm.normalize(data[i:i + size]) for i in range(0, len(data), size))


def test_bare_lf_dialog_becomes_crlf_and_ends_data() -> None:
    """The issue's dialog `Subject: x\\n\\nbody\\n.\\n`: CRLF only, and DATA ends at the lone dot."""
    wire = LineEndNormalizer().normalize(b"Subject: x\n\nbody\n.\n")
    framer = DataFramer(10_000)
    result = framer.feed(wire)
    assert framer.done and framer.problem is None
    assert result.forward == b"Subject: x\r\n\r\nbody\r\n"


@pytest.mark.parametrize("wire", [b"body\n.\r\n", b"body\r\n.\n", b"a\r\nb\nc\r\n.\n"], ids=repr)
def test_mixed_line_ends_end_data(wire: bytes) -> None:
    """Mixed CRLF and bare LF: the dot line ends DATA whatever its line end, content is CRLF-only."""
    framer = DataFramer(10_000)
    result = framer.feed(LineEndNormalizer().normalize(wire))
    assert framer.done and framer.problem is None
    assert b"\n" not in result.forward.replace(b"\r\n", b"")


def test_crlf_input_is_returned_unchanged_as_the_same_object() -> None:
    """Well-behaved clients pay two counts and no copy."""
    chunk = b"Subject: a\r\n\r\nbody\r\n"
    assert LineEndNormalizer().normalize(chunk) is chunk


def test_crlf_split_between_chunks_is_not_bare() -> None:
    """A CR at the end of one chunk and the LF at the start of the next are one CRLF."""
    norm = LineEndNormalizer()
    assert norm.normalize(b"abc\r") == b"abc\r"
    assert norm.normalize(b"\ndef\n") == b"\ndef\r\n"
    assert norm.bare_lf_seen == 1


def test_bare_cr_next_to_a_dot_stays_refused_after_normalizing() -> None:
    """`\\r.\\r\\n` is a line end only to some upstreams: still refused (554), never rewritten."""
    framer = DataFramer(10_000)
    framer.feed(LineEndNormalizer().normalize(b"hi\r.\r\nMAIL FROM:<x@y>\r\n.\r\n"))
    assert framer.done and framer.problem is DataProblem.BARE_LINE_END


@settings(max_examples=1000, deadline=None)
@given(_content, st.integers(min_value=1, max_value=9))
def test_normalizing_any_split_equals_normalizing_whole(content: bytes, size: int) -> None:
    """Chunk boundaries never change the result; no bare LF survives; CRLF count grows by the bare
    LFs found."""
    whole = LineEndNormalizer().normalize(content)
    assert _normalize_in_chunks(content, size) == whole
    assert re.search(rb"(?<!\r)\n", whole) is None
    assert whole.count(b"\r\n") == content.count(b"\r\n") + count_bare_lf(content)


def test_has_bare_lf_tracks_boundaries() -> None:
    """Reject mode's detector: a CRLF split across reads is fine, a lone LF is not."""
    norm = LineEndNormalizer()
    assert not norm.has_bare_lf(b"MAIL FROM:<a@b>\r")
    assert not norm.has_bare_lf(b"\n")
    assert norm.has_bare_lf(b"x\n")


def test_old_style_auth_line_follows_the_standard_one() -> None:
    """EHLO offers `AUTH=LOGIN PLAIN` right after `AUTH LOGIN PLAIN`; nothing else changes."""
    lines = ["250-relay.test", "250-SIZE 100", "250-AUTH LOGIN PLAIN", "250 HELP"]
    assert with_old_style_auth(lines) == ["250-relay.test", "250-SIZE 100", "250-AUTH LOGIN PLAIN",
                                           "250-AUTH=LOGIN PLAIN", "250 HELP"]
    assert with_old_style_auth(["250-x", "250 HELP"]) == ["250-x", "250 HELP"]


def _pop3_replies(data: bytes, bare_lf: str) -> list[Reply]:
    proto = Pop3Protocol(stls_available=False, tls_active=False, plaintext_allowed=True,
                         bare_lf=bare_lf)
    proto.receive_data(data)
    out = []
    while (event := proto.next_event()) is not NEED_DATA:
        assert isinstance(event, Reply)
        out.append(event)
        if event.close:
            break
    return out


def test_pop3_bare_lf_commands_are_read_in_normalize_mode() -> None:
    """Several bare-LF commands in one write: each answered, the connection stays open."""
    replies = _pop3_replies(b"CAPA\nNOOP\n", "normalize")
    assert replies[0].data.startswith(b"+OK") and not any(r.close for r in replies)
    assert len(replies) == 2


def test_pop3_bare_lf_command_is_refused_and_closed_in_reject_mode() -> None:
    """reject: the first bare-LF command gets -ERR and a close; what follows is not read."""
    replies = _pop3_replies(b"CAPA\r\nNOOP\nCAPA\r\n", "reject")
    assert replies[0].data.startswith(b"+OK")
    assert replies[1].data.startswith(b"-ERR Bare LF") and replies[1].close
    assert len(replies) == 2


# --- the settings -------------------------------------------------------------------------------

def _config(listen: dict[str, object]) -> dict[str, object]:
    from relay.passwords import hash_password
    return {
        "listen": listen,
        "token_store": {"key_env": "RELAY_STORE_KEY"},
        "credentials": {"c": {"provider": "microsoft", "client_id": "abc", "tenant_id": "t.example"}},
        "accounts": {"a": {"username": "erp", "password_hash": hash_password("pw", log2_n=4),
                           "mailbox": "a@contoso.com", "credentials": "c"}},
    }


def test_listener_settings_defaults_and_yaml_numbers() -> None:
    """Defaults normalize / 1.2; `min_tls_version: 1.0` (a YAML float) is read as "1.0"."""
    import yaml

    from relay.configuration import parse_config
    default = parse_config(_config({}), env={})
    assert (default.listen.smtp.bare_lf, default.listen.smtp.min_tls_version) == ("normalize", "1.2")
    data = yaml.safe_load("smtp: {bare_lf: reject, min_tls_version: 1.0}\npop3: {min_tls_version: '1.1'}")
    config = parse_config(_config(data), env={})
    assert (config.listen.smtp.bare_lf, config.listen.smtp.min_tls_version) == ("reject", "1.0")
    assert config.listen.pop3.min_tls_version == "1.1"


def test_bad_listener_settings_name_the_yaml_path() -> None:
    """Unknown values are config errors naming listen.smtp.bare_lf / listen.pop3.min_tls_version."""
    from relay.configuration import parse_config
    from relay.errors import ConfigError
    with pytest.raises(ConfigError) as info:
        parse_config(_config({"smtp": {"bare_lf": "strip"}, "pop3": {"min_tls_version": 0.9}}), env={})
    paths = [path for path, _ in info.value.problems]
    assert paths == ["listen.smtp.bare_lf", "listen.pop3.min_tls_version"]


def _frame(wire: bytes, size: int, lf_normalized: bool) -> tuple[DataProblem | None, bytes]:
    framer = DataFramer(10_000, lf_normalized=lf_normalized)
    forwarded = b""
    for i in range(0, len(wire), size):
        if framer.done:
            break
        forwarded += framer.feed(wire[i:i + size]).forward
    assert framer.done
    return framer.problem, forwarded


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"a", b"..", b".\r"]),
                max_size=30).map(b"".join), st.integers(min_value=1, max_value=7))
def test_lf_normalized_framer_agrees_with_the_full_check(content: bytes, size: int) -> None:
    """On normalized input the framer's cheaper check gives the same verdict and bytes as the
    full bare-line-end check, for any chunking."""
    wire = LineEndNormalizer().normalize(content) + b"\r\n.\r\n"
    assert _frame(wire, size, True) == _frame(wire, size, False)
