"""The error-explanation table: provider replies -> cause + fix (see `relay.explain`), and its
`Explanation` type.

Order matters: the first matching entry wins, so specific texts come before general ones (the
5.7.139 variants before the bare 5.7.139; SendAsDenied and the quota texts before a bare 554 5.2.0).
Sources: ``MS-SA`` = learn.microsoft.com/troubleshoot/exchange (SupportArticles-docs,
Exchange/ExchangeOnline), ``MS-OAUTH`` = learn.microsoft.com/exchange/client-developer/legacy-protocols/
how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth, ``ENTRA`` =
learn.microsoft.com/entra/identity-platform/reference-error-codes, ``G-SMTP`` =
support.google.com/a/answer/3726730 (Gmail SMTP errors and codes); ``obs.`` = observed text,
not on a provider page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLACEHOLDERS = re.compile(r"<(mbx|account|credentials)>")


@dataclass(frozen=True)
class Explanation:
    """One known provider reply: how to recognise it, what it means, what fixes it.

    ``pattern`` is a case-insensitive regular expression searched in the reply text; ``source`` is
    where the text and fix are documented (or ``obs.`` plus where it was observed). In ``fix``,
    ``<mbx>``, ``<account>`` and ``<credentials>`` are replaced by `render`.
    """

    key: str
    provider: str  # "microsoft" | "google" | "entra"
    pattern: str
    cause: str
    fix: str
    source: str
    transient: bool = False

    def matches(self, text: str) -> bool:
        """True if ``text`` contains this reply."""
        return re.search(self.pattern, text, re.IGNORECASE) is not None

    def render(self, *, account: str | None = None, mailbox: str | None = None,
               credentials: str | None = None) -> str:
        """``cause; fix`` with the placeholders filled in (left as they are when unknown)."""
        values = {"mbx": mailbox, "account": account, "credentials": credentials}

        def fill(match: re.Match[str]) -> str:
            value = values.get(match.group(1))
            return value if value else match.group(0)

        kind = "temporary" if self.transient else "needs a fix"
        return _PLACEHOLDERS.sub(fill, f"{self.cause} ({kind}). Fix: {self.fix}")


E = Explanation

_SMTP_AUTH_DOC = ("MS-SA "
                  "email-delivery/fix-issues-with-printers-scanners-and-lob-applications-that-send-email-using-off")
_SUBMISSION_DOC = "learn.microsoft.com/exchange/mail-flow-best-practices/smtp-submission-improvements"
_ENABLE_SMTP = ("Set-CASMailbox -Identity <mbx> -SmtpClientAuthenticationDisabled $false (the mailbox "
                "setting "
                "overrides the tenant's; check with Get-CASMailbox <mbx> | fl "
                "SmtpClientAuthenticationDisabled)")

_GRAPH_DOC = "learn.microsoft.com/graph (api/user-sendmail, concepts/throttling-limits, PROTOCOLS.md 9.1-9.2)"

# Microsoft Graph (send_via / read_via: graph). Before MICROSOFT_SMTP: "ErrorSendAsDenied" must not
# be taken for the SMTP SendAsDenied reply, whose fix differs.
GRAPH: tuple[E, ...] = (
    E("graph-send-as-denied", "graph", r"ErrorSendAsDenied",
      "Microsoft Graph refused the From address: <mbx> has no Send As right on it",
      "send with From: <mbx>, or grant <mbx> Send As on that address (Add-RecipientPermission; "
      "delegated tokens also need Mail.Send.Shared)",
      "learn.microsoft.com/graph/outlook-send-mail-from-other-user"),
    E("graph-app-access-policy", "graph", r"Access to OData is disabled",
      "an application access policy keeps the app away from <mbx>",
      "add <mbx> to the policy's group (New-ApplicationAccessPolicy / Test-ApplicationAccessPolicy "
      "-Identity <mbx> -AppId <client id>); changes can take an hour",
      "learn.microsoft.com/graph/auth-limit-mailbox-access"),
    E("graph-access-denied", "graph", r"ErrorAccessDenied|HTTP 403\b",
      "the app has no Microsoft Graph permission for <mbx>",
      "add Mail.Send (and Mail.ReadWrite for reading) under API permissions > Microsoft Graph "
      "(application permissions for app-only), grant admin consent, then `relay authorize <account>` "
      "for delegated credentials", _GRAPH_DOC),
    E("graph-invalid-audience", "graph", r"InvalidAuthenticationToken.*audience|Invalid audience",
      "Microsoft Graph got a token for another resource (e.g. outlook.office.com)",
      "credentials.<credentials>.graph_scopes must be Graph scopes (https://graph.microsoft.com/...); "
      "the relay asks for them by itself unless overridden", _GRAPH_DOC),
    E("graph-mailbox-unknown", "graph", r"MailboxNotEnabledForRESTAPI|ErrorInvalidUser",
      "Microsoft Graph has no Exchange Online mailbox <mbx> (no licence, on-premises, or provisioning)",
      "check accounts.<account>.mailbox and the mailbox's Exchange Online licence", _GRAPH_DOC),
    E("graph-throttled", "graph", r"ApplicationThrottled|MailboxConcurrency",
      "Microsoft Graph throttles this app and mailbox (4 concurrent requests, 10,000 per 10 minutes)",
      "nothing to change for a burst: the relay honours Retry-After; spread sending over time if "
      "it persists", "learn.microsoft.com/graph/throttling-limits", transient=True),
    E("graph-too-big", "graph", r"maximum request length|RequestEntityTooLarge|ErrorMessageSizeExceeded",
      "the message exceeds Microsoft Graph's 4 MB request limit (about 3 MB of MIME after base64)",
      "send large messages with send_via: smtp, or smaller attachments", "api/user-post-messages (4 MB)"),
    E("graph-bad-base64", "graph", r"ErrorMimeContentInvalidBase64String",
      "Microsoft Graph could not decode the base64 MIME body",
      "report it: the relay encodes the message itself", "api/user-sendmail"),
)

MICROSOFT_SMTP: tuple[E, ...] = (
    E("ms-smtp-auth-disabled-tenant", "microsoft",
      r"5\.7\.139.*SmtpClientAuthentication is disabled for the Tenant",
      "SMTP AUTH is turned off for the whole Microsoft 365 tenant",
      "an Exchange admin runs Set-TransportConfig -SmtpClientAuthenticationDisabled $false, or enables it "
      "for this mailbox only: " + _ENABLE_SMTP,
      f"{_SMTP_AUTH_DOC}; learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/"
      "authenticated-client-smtp-submission (aka.ms/smtp_auth_disabled)"),
    E("ms-smtp-auth-disabled-mailbox", "microsoft",
      r"5\.7\.139.*SmtpClientAuthentication is disabled for the Mailbox",
      "SMTP AUTH is turned off for this mailbox",
      _ENABLE_SMTP,
      "learn.microsoft.com/exchange/clients-and-mobile-in-exchange-online/authenticated-client-smtp-submission"),
    E("ms-security-defaults", "microsoft",
      r"5\.7\.139.*security defaults",
      "Microsoft Entra security defaults are on for the tenant; they block SMTP AUTH",
      "a Global Administrator turns security defaults off (Entra admin center > Properties > Manage security "
      "defaults) and protects sign-ins with Conditional Access instead; then enable SMTP AUTH for <mbx>",
      f"{_SMTP_AUTH_DOC}; learn.microsoft.com/entra/fundamentals/security-defaults"),
    E("ms-basic-auth-disabled", "microsoft",
      r"5\.7\.139.*basic authentication is disabled",
      "a password (basic) login was sent, or an authentication policy blocks basic auth for the mailbox",
      "use XOAUTH2 (the relay always does upstream: check that no other app logs in to <mbx> with a "
      "password)", "obs. (many client projects); MS-SA basic-authentication-deprecation-in-exchange-online"),
    E("ms-criteria-not-met", "microsoft",
      r"5\.7\.139.*did not meet the criteria",
      "a tenant policy (likely Conditional Access or a legacy-authentication block) refused the sign-in",
      "an admin checks the Entra sign-in logs of <mbx> for the policy that failed and exempts the "
      "relay's app",
      "obs.; cause UNCONFIRMED by Microsoft"),
    E("ms-org-config", "microsoft",
      r"5\.7\.139.*organization configuration doesn't allow",
      "the organization's configuration (security defaults or an authentication policy) refuses SMTP AUTH",
      "turn security defaults off / allow SMTP AUTH in the authentication policy, then " + _ENABLE_SMTP,
      "learn.microsoft.com/exchange/mail-flow-best-practices/troubleshoot-high-volume-email-m365"),
    E("ms-federated-sts", "microsoft",
      r"5\.7\.139.*federated STS",
      "the tenant's on-premises federation service (AD FS) is unreachable or lacks TLS 1.2",
      "the identity admin repairs the federation server (reachable over HTTPS with TLS 1.2)",
      "obs. (Exchange Online replies); MS-SA"),
    E("ms-smtp-auth-5-7-139", "microsoft",
      r"5\.7\.139",
      "Exchange Online refused SMTP AUTH for a tenant or mailbox setting",
      "check that SMTP AUTH is enabled (" + _ENABLE_SMTP + ") and that security defaults are off",
      _SMTP_AUTH_DOC),
    E("ms-auth-5-7-3", "microsoft",
      r"535[ -]5\.7\.3\b",
      "Exchange Online refused the OAuth token: wrong scope/audience, expired, an app-only service "
      "principal not registered in Exchange, a missing SMTP.Send / SMTP.SendAsApp permission, or a "
      "token for another user than the XOAUTH2 user=",
      "run `relay check` (it reads the token's aud/scp/roles); for app-only register the app in Exchange "
      "(New-ServicePrincipal -AppId <app id> -ObjectId <enterprise app object id>) and grant "
      "Add-MailboxPermission -Identity <mbx> -User <service principal> -AccessRights FullAccess; for "
      "delegated run `relay authorize <account>` signed in as <mbx>",
      "MS-OAUTH (535 5.7.3 sample; service principal steps)"),
    E("ms-not-authenticated-5-7-57", "microsoft",
      r"530[ -]5\.7\.57",
      "Exchange got MAIL FROM without a successful login (or without STARTTLS)",
      "check the account's smtp settings (host smtp.office365.com, port 587, tls starttls); the relay "
      "always authenticates first, so another client is probably sending unauthenticated",
      "MS-SA email-delivery/ndr/fix-error-code-5-7-57-in-exchange-online"),
    E("ms-send-as-5-7-60", "microsoft",
      r"5\.7\.60\b",
      "the MAIL FROM address is not the logged-in mailbox and <mbx> has no Send As right on it",
      "send from <mbx> (accounts.<account>.envelope_sender: rewrite, plus the From header), or grant "
      "Send As: Add-RecipientPermission -Identity <sender address> -Trustee <mbx> -AccessRights SendAs "
      "-Confirm:$false; list allowed addresses in accounts.<account>.allowed_senders",
      "MS-SA email-delivery/send-as-permission-issues; obs. text '550 5.7.60 SMTP; Client does not have "
      "permissions to send as this sender'"),
    E("ms-send-as-denied", "microsoft",
      r"SendAsDenied",
      "the message's sender (From header or MAIL FROM) is not <mbx> and <mbx> may not send as it",
      "send from <mbx>, or grant Send As: Add-RecipientPermission -Identity <sender address> -Trustee <mbx> "
      "-AccessRights SendAs -Confirm:$false (for a shared mailbox also Add-MailboxPermission ... "
      "-AccessRights FullAccess)",
      "MS-SA email-delivery/ndr/fix-error-code-554-5-2-0-in-exchange-online; obs. 554 5.2.252 variant"),
    E("ms-basic-auth-5-7-30", "microsoft",
      r"5\.7\.30\b",
      "basic authentication (a password) was used for SMTP client submission, which Microsoft retired",
      "use OAuth (XOAUTH2): point the app at the relay instead of smtp.office365.com",
      "obs. text quoted from the Exchange team blog 'Exchange Online to retire Basic auth for Client "
      "Submission (SMTP AUTH)'"),
    E("ms-concurrency-4-3-2", "microsoft",
      r"4\.3\.2.*(concurrent connection|sender thread limit)",
      "more than 3 SMTP sessions submitted for this mailbox at the same time (Exchange Online limit)",
      "lower accounts.<account>.max_upstream_sessions (default 3 for Microsoft) and make sure no other "
      "system sends as <mbx> at the same time; the message is retried by the client",
      f"{_SUBMISSION_DOC}; aka.ms/concurrent_sending", transient=True),
    E("ms-too-many-recipients", "microsoft",
      r"452[ -]4\.5\.3",
      "the message has more recipients than the mailbox's limit (500 by default, at most 1000)",
      "split the message, or an admin raises it: Set-Mailbox -Identity <mbx> -RecipientLimits 1000",
      "learn.microsoft.com/office365/servicedescriptions/exchange-online-service-description/"
      "exchange-online-limits (recipient limits); reply text obs.", transient=True),
    E("ms-mailbox-full", "microsoft",
      r"5\.2\.2\b.*(mailbox full|QuotaExceeded)|QuotaExceededException\.MapiExceptionShutoffQuotaExceeded",
      "the sending mailbox is full (Sent Items count against its quota)",
      "empty or archive Sent Items / Deleted Items of <mbx>, or raise its quota",
      _SUBMISSION_DOC),
    E("ms-submission-quota", "microsoft",
      r"SubmissionQuotaExceeded",
      "the mailbox sent to more than 10,000 recipients in 24 hours",
      "wait until the rolling 24-hour window frees up; spread bulk mail over several mailboxes or use "
      "High Volume Email",
      "MS-SA email-delivery/ndr/fix-error-for-submission-quota-exceeded-in-exchange-online"),
    E("ms-server-busy", "microsoft",
      r"451[ -]4\.7\.500",
      "Exchange Online is busy (server-side throttling)",
      "nothing to change: the client retries later; if it persists, lower the sending rate of <mbx>",
      "obs. (Exchange Online '451 4.7.500 Server busy. Please try again later')", transient=True),
    E("ms-ip-blocked-708", "microsoft",
      r"5\.7\.708",
      "Exchange Online does not accept traffic from this sending IP (low reputation, typical of new "
      "or trial tenants)",
      "an admin asks Microsoft Support to lift the block for the tenant",
      "MS-SA email-delivery/ndr/fix-error-codes-550-5-7-703-550-5-7-705-550-5-7-708-550-5-7-750"),
    E("ms-tenant-blocked", "microsoft",
      r"5\.7\.(705|750)\b",
      "the tenant is blocked from sending (spam threshold exceeded, or mail from an unregistered domain)",
      "an admin cleans up compromised accounts / adds the domain as accepted, then contacts Microsoft "
      "Support",
      "MS-SA email-delivery/ndr/fix-error-codes-550-5-7-703-550-5-7-705-550-5-7-708-550-5-7-750"),
    E("ms-restricted-sender", "microsoft",
      r"5\.1\.8\b.*Bad outbound sender|Bad outbound sender",
      "the mailbox is on the Restricted users list (it sent spam)",
      "an admin removes <mbx> from Restricted users (Defender portal) after securing it",
      "learn.microsoft.com/defender-office-365/responding-to-a-compromised-email-account"),
    E("ms-token-expiring", "microsoft",
      r"5\.5\.127|Token will expire soon",
      "the access token was about to expire when it was used",
      "raise limits.token_refresh_margin_s (15 minutes for High Volume Email)",
      "obs. (tarickb/sasl-xoauth2 issue #98)", transient=True),
)

MICROSOFT_POP3: tuple[E, ...] = (
    E("ms-pop-logon-failure", "microsoft",
      r"-ERR\b.*Logon failure",
      "Exchange Online refused a POP3 password login (basic authentication is off)",
      "use XOAUTH2 through the relay; if basic POP is really wanted an admin allows it with "
      "Set-AuthenticationPolicy -AllowBasicAuthPop",
      "MS-SA administration/cannot-connect-mailbox-pop-imap-outlook; text obs."),
    E("ms-pop-oauth-failure", "microsoft",
      r"-ERR Authentication failure",
      "Exchange Online refused the POP3 OAuth token (wrong scope, app-only without POP.AccessAsApp and "
      "mailbox permission, or a token for another user)",
      "run `relay check`; for app-only: Add-MailboxPermission -Identity <mbx> -User <service principal> "
      "-AccessRights FullAccess; for delegated: `relay authorize <account>` signed in as <mbx>",
      "MS-OAUTH"),
    E("ms-imap-auth-failed", "microsoft",
      r"\bNO AUTHENTICATE failed",
      "Exchange Online refused the IMAP OAuth token (wrong scope, app-only without IMAP.AccessAsApp and "
      "mailbox permission, or a token for another user)",
      "run `relay check`; for app-only: Add-MailboxPermission -Identity <mbx> -User <service principal> "
      "-AccessRights FullAccess; for delegated: `relay authorize <account>` signed in as <mbx>",
      "MS-OAUTH (IMAP 'NO AUTHENTICATE failed.')"),
    E("ms-pop-not-connected", "microsoft",
      r"(-ERR|BAD)\b.*not connected",
      "the token was accepted but the mailbox is not reachable over POP/IMAP: POP disabled for the "
      "mailbox, no access to the mailbox named in user=, or the mailbox is not licensed",
      "Set-CASMailbox -Identity <mbx> -PopEnabled $true (IMAP: -ImapEnabled $true); for a shared/other "
      "mailbox grant FullAccess "
      "(Add-MailboxPermission -Identity <mbx> -User <login user or service principal> -AccessRights "
      "FullAccess)",
      "obs. (simonrob/email-oauth2-proxy #74); learn.microsoft.com/exchange/clients-and-mobile-in-exchange-"
      "online/pop3-and-imap4/enable-or-disable-pop3-or-imap4-access"),
)

GOOGLE: tuple[E, ...] = (
    E("g-bad-credentials", "google",
      r"535[ -]5\.7\.8",
      "Gmail refused the login (wrong password or token; password logins need an app password)",
      "run `relay authorize <account>` again; check that credentials.<credentials> belong to a project "
      "with the Gmail scope https://mail.google.com/",
      "G-SMTP; support.google.com/mail/?p=BadCredentials"),
    E("g-xoauth2-refused", "google",
      r"535[ -]5\.7\.1\b.*(Username and Password not accepted|not accepted)",
      "Gmail refused the XOAUTH2 token (expired, revoked or without the https://mail.google.com/ scope)",
      "run `relay authorize <account>`; for a Workspace service account check domain-wide delegation "
      "for the scope https://mail.google.com/",
      "developers.google.com/workspace/gmail/imap/xoauth2-protocol"),
    E("g-app-password", "google",
      r"534[ -]5\.7\.9",
      "2-Step Verification is on, so a plain password login is refused",
      "use OAuth through the relay (or an app password for direct logins)",
      "G-SMTP; support.google.com/mail/?p=InvalidSecondFactor"),
    E("g-web-login", "google",
      r"534[ -]5\.7\.14",
      "Google blocked the sign-in until the user signs in through the web",
      "sign in to Gmail in a browser as <mbx>, confirm the security prompt, then `relay authorize <account>`",
      "G-SMTP; support.google.com/mail/answer/78754"),
    E("g-too-many-logins", "google",
      r"454[ -]4\.7\.0.*Too many login",
      "too many logins to Gmail in a short time",
      "nothing to change right away: wait a few minutes; to avoid it turn on upstream_pool (reuses "
      "one login for many messages)",
      "G-SMTP", transient=True),
    E("g-temporary-problem", "google",
      r"4[25][14][ -]4\.7\.0.*Temporary System Problem",
      "a temporary problem at Gmail",
      "nothing to change: the client retries later",
      "G-SMTP", transient=True),
    E("g-unusual-rate", "google",
      r"421[ -]4\.7\.0.*unusual rate",
      "Gmail detected an unusual rate of unsolicited mail from this IP",
      "slow down and check what is being sent; see Google's bulk sender guidelines",
      "G-SMTP", transient=True),
    E("g-starttls", "google",
      r"530[ -]5\.7\.0.*STARTTLS",
      "the upstream needs STARTTLS before AUTH",
      "set accounts.<account>.smtp.tls: starttls (port 587) or implicit (port 465)",
      "G-SMTP"),
)

ENTRA: tuple[E, ...] = (
    E("aadsts-7000215", "entra", r"AADSTS7000215\b", "invalid client secret (often the secret's ID was "
      "pasted instead of its Value)", "put the secret's Value into credentials.<credentials>.client_secret",
      "ENTRA"),
    E("aadsts-7000222", "entra", r"AADSTS7000222\b", "the client secret expired",
      "create a new secret (or use client_certificate) in credentials.<credentials>", "ENTRA"),
    E("aadsts-700016", "entra", r"AADSTS700016\b", "the application is not found in the tenant (wrong "
      "client_id, wrong tenant or cloud, or never consented there)",
      "check credentials.<credentials>.client_id, tenant_id and cloud; have an admin consent", "ENTRA"),
    E("aadsts-90002", "entra", r"AADSTS90002\b", "the tenant was not found (wrong tenant_id, or a tenant of "
      "another national cloud)", "fix credentials.<credentials>.tenant_id or .cloud", "ENTRA"),
    E("aadsts-90038", "entra", r"AADSTS90038\b", "the tenant belongs to a national cloud",
      "set credentials.<credentials>.cloud (usgovernment or china)", "ENTRA"),
    E("aadsts-7000218", "entra", r"AADSTS7000218\b", "the request must contain client_assertion or "
      "client_secret", "set credentials.<credentials>.client_secret or client_certificate, or enable "
      "'Allow public client flows' for device code", "ENTRA"),
    E("aadsts-700025", "entra", r"AADSTS700025\b", "a public client sent a credential",
      "remove client_secret / client_certificate from credentials.<credentials>", "ENTRA"),
    E("aadsts-700027", "entra", r"AADSTS700027\b", "the client assertion failed signature validation "
      "(certificate not uploaded to the app, or key and certificate do not match)",
      "upload credentials.<credentials>.client_certificate.cert_file to the app registration "
      "(Certificates & secrets) and check key_file belongs to it", "ENTRA"),
    E("aadsts-700024", "entra", r"AADSTS700024\b", "the client assertion is not within its valid time "
      "range (this machine's clock is wrong, or the assertion was reused)",
      "synchronise the clock (NTP); the relay signs a fresh assertion per request", "ENTRA"),
    E("aadsts-700030", "entra", r"AADSTS700030\b", "the certificate's subject name is not authorized",
      "upload the exact certificate used in credentials.<credentials>.client_certificate", "ENTRA"),
    E("aadsts-70008", "entra", r"AADSTS70008\b", "the refresh token expired (unused for too long)",
      "run `relay authorize <account>`", "ENTRA"),
    E("aadsts-700082", "entra", r"AADSTS700082\b", "the refresh token expired due to inactivity",
      "run `relay authorize <account>`", "ENTRA"),
    E("aadsts-50173", "entra", r"AADSTS50173\b", "the grant was revoked (password changed or sessions "
      "revoked)", "run `relay authorize <account>`", "ENTRA"),
    E("aadsts-50076", "entra", r"AADSTS5007[69]\b", "multi-factor authentication is required",
      "run `relay authorize <account>` interactively", "ENTRA"),
    E("aadsts-65001", "entra", r"AADSTS65001\b", "consent to the app's permissions is missing",
      "grant consent (admin consent for app-only), then `relay authorize <account>`", "ENTRA"),
    E("aadsts-70043", "entra", r"AADSTS70043\b", "a Conditional Access sign-in frequency policy expired "
      "the grant", "run `relay authorize <account>`; ask the admin to exempt the relay's app", "ENTRA"),
    E("aadsts-50196", "entra", r"AADSTS50196\b", "too many identical token requests (loop detected)",
      "nothing to change: the relay caches tokens and backs off", "ENTRA", transient=True),
    E("aadsts-530035", "entra", r"AADSTS530035\b", "blocked by security defaults",
      "turn security defaults off and use Conditional Access", "ENTRA"),
    E("aadsts-53003", "entra", r"AADSTS53003\b", "blocked by a Conditional Access policy",
      "an admin checks the sign-in logs and exempts the relay's app or location", "ENTRA"),
    E("aadsts-70000", "entra", r"AADSTS70000\b", "the grant is invalid (or the account is in service "
      "abuse mode)", "run `relay authorize <account>`; if it persists contact Microsoft Support", "ENTRA"),
)

EXPLANATIONS: tuple[E, ...] = GRAPH + MICROSOFT_SMTP + MICROSOFT_POP3 + GOOGLE + ENTRA
