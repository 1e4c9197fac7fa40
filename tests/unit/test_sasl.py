"""Unit tests for the pure SASL helpers (relay.sasl)."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import sasl
from relay.errors import ProtocolInputError


def test_xoauth2_matches_documented_wire_format() -> None:
    """The XOAUTH2 response is user=U^Aauth=Bearer T^A^A, base64 padded (PROTOCOLS.md 1)."""
    encoded = sasl.encode_xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert base64.b64decode(encoded) == (
        b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    )


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\x00b", "a\x01b"])
def test_xoauth2_refuses_control_characters_in_user_and_token(bad: str) -> None:
    """CR, LF, NUL and ^A can never reach an XOAUTH2 string."""
    with pytest.raises(ProtocolInputError):
        sasl.encode_xoauth2(bad, "token")
    with pytest.raises(ProtocolInputError):
        sasl.encode_xoauth2("user@example.com", bad)


def test_xoauth2_round_trip() -> None:
    """decode_xoauth2 recovers what encode_xoauth2 built."""
    creds = sasl.decode_xoauth2(sasl.encode_xoauth2("a@b.example", "tok-123"))
    assert (creds.user, creds.token) == ("a@b.example", "tok-123")


@pytest.mark.parametrize(
    "raw",
    [b"user=a\x01auth=Bearer t\x01", b"user=a\x01auth=Basic t\x01\x01", b"auth=Bearer t\x01\x01",
     b"junk\x01\x01"],
)
def test_decode_xoauth2_rejects_malformed_responses(raw: bytes) -> None:
    """Malformed XOAUTH2 responses raise ProtocolInputError, never something else."""
    with pytest.raises(ProtocolInputError):
        sasl.decode_xoauth2(base64.b64encode(raw))


def test_oauthbearer_round_trip_and_escaping() -> None:
    """OAUTHBEARER escapes ',' and '=' in the user and carries host, port and token (RFC 7628)."""
    encoded = sasl.encode_oauthbearer("we,ird=@example.com", "mail.example.com", 587, "tok")
    raw = base64.b64decode(encoded)
    assert raw.startswith(b"n,a=we=2Cird=3D@example.com,\x01host=mail.example.com\x01port=587\x01")
    creds = sasl.decode_oauthbearer(encoded)
    assert (creds.user, creds.token) == ("we,ird=@example.com", "tok")


def test_error_challenge_round_trip_and_dovecot_sample() -> None:
    """The 334/+ JSON error challenge decodes, including Dovecot's documented sample."""
    assert sasl.decode_error_challenge(sasl.encode_error_challenge("400")) == {
        "status": "400", "schemes": "bearer", "scope": "mail"}
    dovecot = "eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0="
    assert sasl.decode_error_challenge(dovecot) == {"status": "401", "schemes": "bearer", "scope": "mail"}
    assert sasl.decode_error_challenge("") is None
    assert sasl.decode_error_challenge("not base64!") is None
    assert sasl.decode_error_challenge(base64.b64encode(b"[1,2]").decode()) is None


def test_plain_decoding() -> None:
    """AUTH PLAIN decodes authzid, username and password."""
    creds = sasl.decode_plain(sasl.encode_plain("app", "pässword", authzid="z"))
    assert (creds.authzid, creds.username, creds.password) == ("z", "app", "pässword")


@pytest.mark.parametrize(
    "raw",
    [b"only-one-part", b"\x00user", b"\x00\x00pw", b"a\x00b\x00c\x00d", b"\x00us\rer\x00pw",
     b"\x00user\x00p\x01w", b"\x00\xff\xfe\x00pw"],
)
def test_plain_rejects_malformed_or_dangerous_input(raw: bytes) -> None:
    """Wrong field counts, empty usernames, control characters and bad UTF-8 are refused."""
    with pytest.raises(ProtocolInputError):
        sasl.decode_plain(base64.b64encode(raw))


@pytest.mark.parametrize("text", ["%%%", "YQ", "YWJj\x00", "ÿ", "YW Jj"])
def test_invalid_base64_is_a_protocol_input_error(text: str) -> None:
    """Invalid or unpadded base64 is refused with ProtocolInputError."""
    with pytest.raises(ProtocolInputError):
        sasl.b64decode_strict(text)


def test_login_field_decoding() -> None:
    """AUTH LOGIN steps decode and refuse control characters."""
    assert sasl.decode_login_field(base64.b64encode(b"user"), "username") == "user"
    with pytest.raises(ProtocolInputError):
        sasl.decode_login_field(base64.b64encode(b"us\nr"), "username")


@given(st.binary(max_size=300))
def test_decoders_raise_only_documented_errors(data: bytes) -> None:
    """Arbitrary input to every decoder either decodes or raises ProtocolInputError."""
    for decoder in (sasl.decode_plain, sasl.decode_xoauth2, sasl.decode_oauthbearer):
        for candidate in (data, base64.b64encode(data)):
            with contextlib.suppress(ProtocolInputError):
                decoder(candidate)
