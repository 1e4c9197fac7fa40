"""Microsoft Graph as an upstream: send (`send.GraphDelivery`) and read (`mailbox.GraphMailbox`).

Pure parts: `answers` (HTTP answer -> error -> SMTP reply / operator advice), `envelope` (the SMTP
envelope made the MIME header recipients). I/O: `client` (httpx, tokens per resource, throttling).
"""
