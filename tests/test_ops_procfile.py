"""The Procfile as users run it: honcho, environment variables only, real Postgres/Redis/moto."""
import imaplib
import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import requests

import models
from tests.fixtures_ops import deploy_env
from tests.fixtures_ops import smtp_send
from tests.helpers import free_port
from tests.helpers import make_account
from tests.helpers import wait_for_port
from tests.helpers import wait_until

ROOT = Path(__file__).resolve().parent.parent
HONCHO = str(Path(sys.executable).with_name("honcho"))


def test_procfile_under_honcho_relays_smtp_and_api_sends(config, tmp_path, ses_sent):
    web_port, smtp_port, tls_port = free_port(), free_port(), free_port()
    imap_port, imap_starttls_port = free_port(), free_port()
    env = deploy_env(config, PORT=web_port, INBOXLAYER_SMTP_STARTTLS_PORT=smtp_port,
                     INBOXLAYER_SMTP_TLS_PORT=tls_port, INBOXLAYER_IMAP_TLS_PORT=imap_port,
                     INBOXLAYER_IMAP_STARTTLS_PORT=imap_starttls_port)
    release = subprocess.run([HONCHO, "-f", "Procfile", "run", "inboxlayer", "db", "init"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert release.returncode == 0, release.stdout + release.stderr
    log = open(tmp_path / "honcho.log", "wb")
    honcho = subprocess.Popen([HONCHO, "-f", "Procfile", "start", "web", "smtp", "imap", "worker"], cwd=ROOT,
                              env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(web_port, timeout=60, proc=honcho)
        wait_for_port(smtp_port, timeout=60, proc=honcho)
        account = make_account()
        cafile = Path(config["server"]["data_dir"]) / "tls" / "smtp-cert.pem"

        code, text = smtp_send(smtp_port, cafile, account.address, account.token, ["smtp-rcpt@example.com"],
                               subject="via smtp")
        assert code == 250 and text.startswith("2.0.0 OK queued as ob_"), text
        smtp_id = text.rsplit(" ", 1)[1]

        response = requests.post(f"http://127.0.0.1:{web_port}/v1/inboxes/{account.address}/send",
                                 headers={"Authorization": f"Bearer {account.token}"},
                                 json={"to": ["api-rcpt@example.com"], "subject": "via api", "text": "hi"},
                                 timeout=30)
        assert response.status_code == 202, response.text
        api_id = response.json()["id"]

        def both_sent():
            with models.db.connection_context():
                rows = {r.public_id: r.status for r in models.OutboundEmail.select()}
            return rows if rows == {smtp_id: "sent", api_id: "sent"} else None

        wait_until(both_sent, timeout=60, what="both messages relayed by the worker")
        subjects = sorted(m["raw_data"].split("Subject: ", 1)[1].split("\r\n", 1)[0] for m in ses_sent())
        assert subjects == ["via api", "via smtp"]
        wait_for_port(imap_port, timeout=60, proc=honcho)
        imap = imaplib.IMAP4_SSL("127.0.0.1", imap_port, ssl_context=ssl.create_default_context(cafile=str(cafile)),
                                 timeout=30)
        imap.login(account.address, account.token)
        assert imap.select("Sent", readonly=True) == ("OK", [b"2"])
        imap.logout()
    finally:
        os.killpg(honcho.pid, signal.SIGTERM)
        honcho.wait(60)
        log.close()
    output = (tmp_path / "honcho.log").read_text(errors="replace")
    assert account.token not in output
