"""The protocol-free core every front-end (SMTP, REST, dashboard, CLI admin, relay worker) shares.

Nothing here imports Flask, gevent, Typer or RQ worker code.
"""
