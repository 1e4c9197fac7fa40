"""What the POP3 and IMAP proxies share: the line-protocol session and listener skeletons.

- `relay.lineproto.events`: pure values both protocol cores hand out (NEED_DATA, PAUSED, `Reply`,
  `StartTls`) and the interface a core offers its session (`LineCore`).
- `relay.lineproto.session`: `LineSession`, one client connection: the read/feed/write loop, the
  session limits, STARTTLS, the login decision and the one teardown (`LineSession._close`).
- `relay.lineproto.login`: how an upstream login failure becomes a `Refusal` and a log line.
- `relay.lineproto.listener`: `LineListener`, the listening socket, connection caps, graceful stop.

relay.pop3 and relay.imap subclass these with what differs: the greeting, the words of their
replies, and what follows a login (POP3 forwards commands, IMAP splices the two connections).
"""
