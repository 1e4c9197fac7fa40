"""Unit tests for relay.smtp.reply: upstream reply parsing, rendering and EHLO capabilities."""

from __future__ import annotations

import pytest

from relay.errors import UpstreamProtocolError
from relay.smtp.reply import EhloCapabilities, ReplyParser, SmtpReply, parse_reply


@pytest.mark.parametrize(
    ("wire", "code", "enhanced", "lines"),
    [
        (b"250 OK\r\n", 250, None, ("OK",)),
        (b"250 2.1.0 Sender OK\r\n", 250, "2.1.0", ("Sender OK",)),
        (b"550 5.7.60 SMTP; Client does not have permissions to send as this sender\r\n", 550,
         "5.7.60", ("SMTP; Client does not have permissions to send as this sender",)),
        (b"535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support\r\n", 535,
         "5.7.8", ("Username and Password not accepted.", "https://support")),
        (b"354 Start mail input; end with <CRLF>.<CRLF>\r\n", 354, None,
         ("Start mail input; end with <CRLF>.<CRLF>",)),
        (b"250\r\n", 250, None, ("",)),
        (b"451 4.4.2\r\n", 451, "4.4.2", ("",)),
        (b"250 5.1.1 looks enhanced but wrong class\r\n", 250, None,
         ("5.1.1 looks enhanced but wrong class",)),
        (b"334 eyJzdGF0dXMiOiI0MDEifQ==\r\n", 334, None, ("eyJzdGF0dXMiOiI0MDEifQ==",)),
        (b"220 host ESMTP\n", 220, None, ("host ESMTP",)),
    ],
)
def test_parse_reply_splits_code_enhanced_code_and_text(wire, code, enhanced, lines):
    """A reply is parsed into its code, its enhanced code (only if of the code's class) and text."""
    reply = parse_reply(wire)
    assert (reply.code, reply.enhanced_code, reply.text_lines) == (code, enhanced, lines)


@pytest.mark.parametrize(
    "wire",
    [
        b"250-SIZE 100\r\n250-8BITMIME\r\n250 HELP\r\n",
        b"550 5.7.60 SMTP; Client does not have permissions\r\n",
        b"535-5.7.8 Username and Password not accepted.\r\n535 5.7.8 https://support\r\n",
        b"451 4.3.2 Concurrent connections limit exceeded\r\n",
        b"250 OK\r\n",
    ],
)
def test_render_gives_back_the_upstream_reply_unchanged(wire):
    """Rendering a parsed upstream reply reproduces the wire text (code, enhanced code, text)."""
    assert parse_reply(wire).render() + "\r\n" == wire.decode()


def test_render_adds_enhanced_code_to_every_line_of_a_multiline_reply():
    """A locally built multi-line reply carries its enhanced code on every line (RFC 2034)."""
    reply = SmtpReply.make(454, "4.7.0", "first", "second")
    assert reply.render() == "454-4.7.0 first\r\n454 4.7.0 second"
    assert reply.one_line() == "454 4.7.0 first second"


def test_parser_returns_none_until_the_last_line():
    """The incremental parser yields a reply only at the line without a dash."""
    parser = ReplyParser()
    assert parser.feed_line(b"250-host\r\n") is None
    assert parser.feed_line(b"250-PIPELINING\r\n") is None
    reply = parser.feed_line(b"250 SIZE 10\r\n")
    assert reply is not None and reply.text_lines == ("host", "PIPELINING", "SIZE 10")
    assert parser.feed_line(b"221 bye\r\n") == SmtpReply(221, None, ("bye",))


@pytest.mark.parametrize(
    "line",
    [b"", b"25", b"abc hello", b"250x", b"650 bad class", b"099 low", b"2500 four digits"],
)
def test_parser_refuses_malformed_lines(line):
    """Lines that are not an SMTP reply raise UpstreamProtocolError."""
    with pytest.raises(UpstreamProtocolError):
        ReplyParser().feed_line(line)


def test_parser_refuses_a_code_change_mid_reply():
    """A multi-line reply whose code changes is a protocol error."""
    parser = ReplyParser()
    parser.feed_line(b"250-a")
    with pytest.raises(UpstreamProtocolError):
        parser.feed_line(b"550 b")


def test_parser_refuses_runaway_replies():
    """More continuation lines than MAX_REPLY_LINES is a protocol error, not endless memory."""
    parser = ReplyParser()
    with pytest.raises(UpstreamProtocolError):
        for _ in range(1000):
            parser.feed_line(b"250-x")


def test_parse_reply_refuses_incomplete_and_trailing_data():
    """parse_reply needs exactly one complete reply."""
    with pytest.raises(UpstreamProtocolError):
        parse_reply(b"250-a\r\n")
    with pytest.raises(UpstreamProtocolError):
        parse_reply(b"250 a\r\n250 b\r\n")


def test_reply_classes():
    """is_positive / is_transient / is_permanent follow the first digit."""
    assert SmtpReply(250).is_positive and not SmtpReply(250).is_transient
    assert SmtpReply(451).is_transient and not SmtpReply(451).is_permanent
    assert SmtpReply(550).is_permanent and not SmtpReply(354).is_positive


EXCHANGE_EHLO = (
    b"250-SN4PR0501CA0056.outlook.office365.com Hello [203.0.113.9]\r\n"
    b"250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n"
    b"250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n"
    b"250 SMTPUTF8\r\n"
)


def test_ehlo_capabilities_of_exchange_online():
    """A typical Exchange Online EHLO (after STARTTLS) is read completely."""
    caps = EhloCapabilities.parse(parse_reply(EXCHANGE_EHLO))
    assert caps.size == 157286400
    assert caps.eight_bit_mime and caps.smtputf8 and caps.pipelining and caps.chunking
    assert not caps.starttls
    assert caps.auth_mechanisms == {"LOGIN", "XOAUTH2"}
    assert "CHUNKING" in caps.keywords


@pytest.mark.parametrize(
    ("lines", "size", "auth", "starttls"),
    [
        ([b"250 host"], None, set(), False),
        ([b"250-host", b"250 SIZE"], 0, set(), False),
        ([b"250-host", b"250-size 0", b"250 starttls"], 0, set(), True),
        ([b"250-host", b"250-AUTH=LOGIN PLAIN", b"250 AUTH xoauth2 oauthbearer"], None,
         {"LOGIN", "PLAIN", "XOAUTH2", "OAUTHBEARER"}, False),
        ([b"250-host", b"250-", b"250 SIZE abc"], 0, set(), False),
    ],
)
def test_ehlo_capabilities_edge_cases(lines, size, auth, starttls):
    """SIZE without a number means no fixed limit; keywords are case-insensitive; AUTH= form."""
    caps = EhloCapabilities.parse(parse_reply(b"\r\n".join(lines) + b"\r\n"))
    assert (caps.size, set(caps.auth_mechanisms), caps.starttls) == (size, auth, starttls)


@pytest.mark.parametrize(("upstream", "own", "effective"),
                         [(None, 100, 100), (0, 100, 100), (50, 100, 50), (500, 100, 100)])
def test_effective_size_limit_never_exceeds_the_upstream(upstream, own, effective):
    """The advertised limit is ours, lowered to the upstream's fixed SIZE when there is one."""
    assert EhloCapabilities(size=upstream).effective_size_limit(own) == effective


def test_repeated_one_line_replies_come_back_parsed_and_equal():
    """A one-line reply seen before is the same parsed value; a multi-line reply whose last line
    looks like a remembered one still ends that multi-line reply."""
    first = ReplyParser().feed_line(b"250 2.1.0 Sender OK\r\n")
    again = ReplyParser().feed_line(b"250 2.1.0 Sender OK\r\n")
    assert again is first and again == SmtpReply(250, "2.1.0", ("Sender OK",))
    parser = ReplyParser()
    assert parser.feed_line(b"250-first\r\n") is None
    multi = parser.feed_line(b"250 2.1.0 Sender OK\r\n")
    assert multi == SmtpReply(250, None, ("first", "2.1.0 Sender OK"))


def test_remembered_replies_are_bounded():
    """Unique one-line replies (queue ids) never grow the table past its bound."""
    from relay.smtp import reply as reply_module

    for i in range(reply_module.MAX_REMEMBERED_REPLIES * 3):
        assert ReplyParser().feed_line(b"250 2.0.0 OK queued as %d\r\n" % i).code == 250
    assert len(reply_module._ONE_LINE_REPLIES) <= reply_module.MAX_REMEMBERED_REPLIES
    with pytest.raises(UpstreamProtocolError):
        ReplyParser().feed_line(b"25x not a reply\r\n")
