"""Server commands: `web`, `smtpd`, `worker` (one process each, as in the Procfile), `dev` and `health`."""
import os
import sys

import typer

import runtime
from cli import devserver
from cli.common import load_settings
from cli.output import console


def web(host: str = typer.Option(None, help="Bind address (default web.host)."),
        port: int = typer.Option(None, help="Port (default web.port / $PORT)."),
        workers: int = typer.Option(int(os.environ.get("WEB_CONCURRENCY", "2")), help="gunicorn workers.")):
    """Serve the dashboard and REST API (gunicorn, gevent worker)."""
    config = load_settings()
    bind = f"{host or config['web']['host']}:{port or config['web']['port']}"
    argv = [sys.executable, "-m", "gunicorn", "--worker-class", "gevent", "--workers", str(workers),
            "--bind", bind, "--graceful-timeout", "25", "--access-logfile", "-", "webapp.wsgi:app"]
    os.execv(sys.executable, argv)


def smtpd():
    """Serve SMTP submission on the STARTTLS and implicit-TLS ports."""
    load_settings()  # a settings mistake is reported here, as one line, before the exec
    # A fresh interpreter: gevent must patch ssl/socket before anything imports them.
    os.execv(sys.executable, [sys.executable, "-m", "smtpd_worker"])


def imapd():
    """Serve IMAP (the Sent folder) on the implicit-TLS and STARTTLS ports."""
    load_settings()
    os.execv(sys.executable, [sys.executable, "-m", "imapd"])


# The commands below import their stack when they run (not for a cycle): `web` and `smtpd` exec a
# fresh interpreter, so this module must not load the relay worker or the SES client first.


def worker(burst: bool = typer.Option(False, help="Exit when the queue is empty.")):
    """Run a relay worker (RQ) with the periodic reconciler."""
    from smtpd_worker import worker as relay_worker

    relay_worker.main(load_settings(), burst=burst)


def health():
    """Check that the database, Redis and SES answer (exit 1 if not)."""
    from core import health as checks

    config = load_settings()
    runtime.configure(config)
    results = checks.run_all(config)
    for name, (ok, detail) in results.items():
        console.print(f"{name:10} {'[green]ok[/]' if ok else '[red]FAIL[/]'} {detail}", highlight=False)
    raise typer.Exit(0 if all(ok for ok, _ in results.values()) else 1)


def dev():
    """Everything on one machine: web, SMTP, worker and the SES stand-in."""
    devserver.run(load_settings())
