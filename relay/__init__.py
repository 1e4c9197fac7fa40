"""xoauth2-relay: plain SMTP/POP3 logins in, OAuth 2.0 (XOAUTH2) sessions out."""

__version__ = "0.1.0"
