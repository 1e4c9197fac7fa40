"""The protocol-neutral upstream layer, shared by SMTP, the SMTP pool, POP3 and `relay check`.

    stream.py   open a TCP stream to an upstream endpoint (implicit TLS, or STARTTLS/STLS later),
                TCP_NODELAY, and the translation of low-level failures into `relay.errors`
    login.py    `login_with_refresh`: log in with the account's token; when the upstream refuses
                it, force one refresh (naming the rejected token) and try once more;
                `connect_and_log_in` for POP3/IMAP: a fresh connection per attempt, and
                only a refused token (`TokenRejected`) earns the refresh

The protocol clients (`relay.smtp.upstream.UpstreamSmtpSession`,
`relay.pop3.upstream.UpstreamPop3Session`) are built on these and have the same shape:
``await connect()``, ``await authenticate(mailbox, token)``, commands, ``quit()``/``abort()``.
"""
