"""The SMTP side of the relay: a local aiosmtpd listener, a delivery seam, live forwarding.

Local side:
    server.py       SmtpRelayServer: listener, connection limit, graceful stop
    session.py      aiosmtpd SMTP subclass (RelaySMTP): bulk DATA reader, AUTH, STARTTLS, output
    session_limits.py  its base: per-client cap, login deadline, command budget
    connection.py   ConnectionState: per-connection state that survives STARTTLS
    builtin_replies.py  pure: enhanced codes for aiosmtpd's own replies, the EHLO AUTH= line
    handler.py      thin adapter: local AUTH, address checks, envelope; commands to the delivery
    replies.py      every reply the relay itself sends, as named SmtpReply values
    dataframe.py    pure: DATA end-of-data detection, size and line-length limits
The seam:
    delivery.py     Delivery / ContentSink: what happens to a connection's transactions
Live forwarding (the first Delivery):
    forward.py      LiveSmtpDelivery: executes the core's commands on the upstream session/pool
    transaction.py  pure: the relay-transaction state machine (delayed MAIL, retry, pool rules)
    events.py       pure: the core's commands and outcomes
    upstream.py     async client for one upstream SMTP session (STARTTLS, XOAUTH2, pipelined
                    MAIL+RCPT, DATA streaming)
    pool.py         opt-in bounded reuse of logged-in upstream sessions per account
    datasink.py     one message's content upstream (DATA, or one BDAT LAST) and how it ended
    bdat.py         pure: dot-unstuffing, the BDAT LAST chunk
    reply.py        pure: upstream reply parsing/rendering, EHLO capabilities
    failures.py     pure: upstream/token failures -> client replies, log explanations with fixes
"""
