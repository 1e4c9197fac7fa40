"""The admin page as server-rendered HTML (pure functions; no JavaScript, one small stylesheet).

Every value is HTML-escaped; nothing secret is ever passed in (the /status document has no
token). Forms POST with the session's CSRF token.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from relay.admin.actions import DeviceSignIn

CSS = """
body{font-family:system-ui,sans-serif;margin:0;padding:1rem;background:#f6f7f9;color:#1d2330}
h1{font-size:1.3rem;margin:0 0 .5rem}h2{font-size:1.05rem;margin:1.2rem 0 .4rem}
.bar{display:flex;flex-wrap:wrap;gap:.6rem;align-items:center;margin-bottom:.6rem}
.ok{color:#17692e}.bad{color:#a3161a;font-weight:600}.muted{color:#5b6475}
.card{background:#fff;border:1px solid #d9dde5;border-radius:8px;padding:.8rem;margin:.6rem 0}
.card h3{margin:0 0 .4rem;font-size:1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:.2rem 0 .6rem}
dt{color:#5b6475}dd{margin:0;word-break:break-word}
form{display:inline-flex;gap:.3rem;margin:.2rem .4rem .2rem 0;flex-wrap:wrap}
input[type=email],input[type=password],input[type=text]{padding:.35rem;border:1px solid #b8bfcc;
border-radius:4px}
button{padding:.35rem .7rem;border:1px solid #2a4d8f;background:#2f5fb3;color:#fff;border-radius:4px;
cursor:pointer}
button.danger{background:#fff;color:#a3161a;border-color:#a3161a}
.flash{background:#fff8d6;border:1px solid #e3c84b;padding:.5rem;border-radius:6px;margin:.4rem 0}
.code{font-family:ui-monospace,monospace;font-size:1.2rem;letter-spacing:.1rem}
table{border-collapse:collapse}td,th{padding:.2rem .6rem;text-align:left;border-bottom:1px solid #e3e6ec}
"""

SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)


def _layout(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<meta name=viewport content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><link rel=stylesheet href=/admin.css></head>"
            f"<body>{body}</body></html>")


def login_page(error: str | None = None) -> str:
    """The login form (the admin token)."""
    message = f"<p class=bad>{escape(error)}</p>" if error else ""
    return _layout("xoauth2-relay: log in", (
        "<h1>xoauth2-relay admin</h1>" + message +
        "<form method=post action=/login><label>Admin token (admin.auth_token) "
        "<input type=password name=token autocomplete=current-password required maxlength=512></label>"
        "<button type=submit>Log in</button></form>"))


def message_page(title: str, text: str, ok: bool) -> str:
    """A page with one message and a link back (errors, the callback without a session)."""
    cls = "ok" if ok else "bad"
    return _layout(f"xoauth2-relay: {title}", f"<h1>{escape(title)}</h1><p class={cls}>{escape(text)}</p>"
                   "<p><a href=/>Back to the admin page</a></p>")


def _hidden(csrf: str) -> str:
    return f"<input type=hidden name=csrf value='{escape(csrf)}'>"


def _account_card(name: str, acc: dict[str, object], csrf: str, device: DeviceSignIn | None) -> str:
    state = str(acc.get("grant_state"))
    needs = bool(acc.get("needs_reauthorization"))
    cls = "bad" if needs or state == "expired" else "ok"
    rows = [("Grant", f"<span class={cls}>{escape(state)}</span>"),
            ("Mailbox", escape(str(acc.get("mailbox") or "-"))),
            ("Access token expires", escape(str(acc.get("access_token_expires_at") or "-"))),
            ("Last refresh", escape(f"{acc.get('last_refresh_at') or '-'} "
                                    f"({acc.get('last_refresh_outcome') or '-'})")),
            ("Last error", escape(str(acc.get("last_upstream_error") or acc.get("last_token_error") or "-"))),
            ("Messages", f"{int(acc.get('messages_sent') or 0)} sent, "  # type: ignore[call-overload]
                         f"{int(acc.get('messages_fetched') or 0)} fetched")]  # type: ignore[call-overload]
    if acc.get("fix"):
        rows.append(("Fix", escape(str(acc["fix"]))))
    details = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    path = f"/accounts/{quote(name, safe='')}"
    label = "Re-authorize" if state not in ("not authorized",) else "Authorize"
    forms = [f"<form method=post action={path}/authorize>{_hidden(csrf)}"
             f"<button type=submit>{label}</button></form>"]
    if acc.get("sends"):
        forms.append(f"<form method=post action={path}/test>{_hidden(csrf)}"
                     "<input type=email name=to placeholder='recipient@example.com' required maxlength=254>"
                     "<button type=submit>Send test message</button></form>")
    forms.append(f"<form method=post action={path}/revoke>{_hidden(csrf)}"
                 "<button type=submit class=danger>Revoke</button></form>")
    device_html = ""
    if device is not None:
        status = escape(device.result or "waiting for the sign-in")
        device_html = (f"<p>Sign in at <a href='{escape(device.verification_uri)}' rel=noreferrer>"
                       f"{escape(device.verification_uri)}</a> with the code "
                       f"<span class=code>{escape(device.user_code)}</span> ({status})</p>")
    return (f"<div class=card id='account-{escape(name)}'><h3>{escape(name)}</h3><dl>{details}</dl>"
            f"{device_html}{''.join(forms)}</div>")


def status_page(doc: dict[str, object], csrf: str, flash: list[str],
                devices: dict[str, DeviceSignIn]) -> str:
    """The main page: readiness, accounts with their buttons, listeners, version."""
    ready = bool(doc.get("ready"))
    head = (f"<h1>xoauth2-relay {escape(str(doc.get('version')))}</h1><div class=bar>"
            f"<span class={'ok' if ready else 'bad'}>{'ready' if ready else 'not ready'}</span>"
            f"<span class=muted>up {escape(str(doc.get('uptime_s')))} s</span>"
            "<a href=/>Reload</a>"
            f"<form method=post action=/logout>{_hidden(csrf)}"
            "<button type=submit class=danger>Log out</button></form></div>")
    notes = "".join(f"<div class=flash>{escape(m)}</div>" for m in flash)
    reasons = "".join(f"<li>{escape(str(r))}</li>" for r in doc.get("reasons") or [])  # type: ignore[attr-defined]
    accounts: dict[str, dict[str, object]] = doc.get("accounts") or {}  # type: ignore[assignment]
    cards = "".join(_account_card(n, a, csrf, devices.get(n)) for n, a in accounts.items())
    rows = "".join(
        f"<tr><td>{escape(str(ls['name']))}</td><td>{escape(str(ls['host']))}:{int(ls['port'])}</td>"
        f"<td>{escape(str(ls['tls']))}</td><td>{int(ls['active_sessions'])}</td>"
        f"<td>{'yes' if ls['accepting'] else 'NO'}</td></tr>"
        for ls in doc.get("listeners") or [])  # type: ignore[attr-defined]
    listeners = ("<h2>Listeners</h2><table><tr><th>Listener</th><th>Address</th><th>TLS</th>"
                 f"<th>Sessions</th><th>Accepting</th></tr>{rows}</table>")
    return _layout("xoauth2-relay admin", head + notes + (f"<ul>{reasons}</ul>" if reasons else "")
                   + "<h2>Accounts</h2>" + cards + listeners)
