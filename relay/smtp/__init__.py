"""The SMTP side of the relay: a local aiosmtpd listener and an XOAUTH2 upstream client.

    reply.py      pure: upstream reply parsing/rendering, EHLO capabilities
    failures.py   pure: upstream/token failures -> client replies, log explanations with fixes
    dataframe.py  pure: DATA end-of-data detection, size and line-length limits
    upstream.py   async client for one upstream SMTP session (STARTTLS, XOAUTH2, pipelined
                  MAIL+RCPT, DATA streaming)
    bdat.py       dot-unstuffing (pure) and BDAT chunking (RFC 3030) over an upstream session
    datasink.py   one message's content upstream (DATA or BDAT) and the client's final reply
    handler.py    the relay policy (local AUTH, delayed MAIL, forwarding RCPT/DATA, error mapping)
    protocol.py   aiosmtpd SMTP subclass: bulk DATA reader, enhanced codes, connection state
    server.py     SmtpRelayServer: listener, connection limit, graceful stop
"""
