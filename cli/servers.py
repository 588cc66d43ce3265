"""Server commands: `web`, `smtpd`, `worker` (one process each, as in the Procfile) and `dev`."""
import os
import sys

import typer

from cli.common import console
from cli.common import load_settings


def register(app):
    app.command(help="Serve the dashboard and REST API (gunicorn, gevent worker).")(web)
    app.command(help="Serve SMTP submission on the STARTTLS and implicit-TLS ports.")(smtpd)
    app.command(help="Run a relay worker (RQ) with the periodic reconciler.")(worker)
    app.command(help="Everything on one machine: web, SMTP, worker and the SES stand-in.")(dev)
    app.command(help="Check that the database, Redis and SES answer (exit 1 if not).")(health)


def web(host: str = typer.Option(None, help="Bind address (default web.host)."),
        port: int = typer.Option(None, help="Port (default web.port / $PORT)."),
        workers: int = typer.Option(int(os.environ.get("WEB_CONCURRENCY", "2")), help="gunicorn workers.")):
    config = load_settings()
    bind = f"{host or config['web']['host']}:{port or config['web']['port']}"
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", str(workers),
            "--bind", bind, "--graceful-timeout", "25", "--access-logfile", "-", "webapp.wsgi:app"]
    os.execv(sys.executable, argv)


def smtpd():
    load_settings()  # a settings mistake is reported here, as one line, before the exec
    # A fresh interpreter: gevent must patch ssl/socket before anything imports them.
    os.execv(sys.executable, [sys.executable, "-m", "smtpd_worker"])


# Each command imports its process's stack when it runs (not for a cycle): `inboxlayer --help` and
# the client commands must not load the SMTP server, the relay worker or the database.


def worker(burst: bool = typer.Option(False, help="Exit when the queue is empty.")):
    from smtpd_worker import worker as relay_worker

    relay_worker.main(load_settings(), burst=burst)


def health():
    import runtime
    from core import health as checks

    config = load_settings()
    runtime.configure(config)
    results = checks.run_all(config)
    for name, (ok, detail) in results.items():
        console.print(f"{name:10} {'[green]ok[/]' if ok else '[red]FAIL[/]'} {detail}", highlight=False)
    raise typer.Exit(0 if all(ok for ok, _ in results.values()) else 1)


def dev():
    from cli import devserver

    devserver.run(load_settings())
