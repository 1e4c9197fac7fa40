"""POP3 proxy: pure protocol state machine, upstream XOAUTH2 client and the asyncio server."""
