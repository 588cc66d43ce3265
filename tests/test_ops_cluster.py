"""Several nodes against one Postgres and one Redis behave as one system."""
import base64
import smtplib
import ssl
from concurrent.futures import ThreadPoolExecutor

import models
from tests.fixtures_ops import smtp_send
from tests.helpers import make_account
from tests.helpers import wait_until

CLIENTS, PER_CLIENT, LIMIT = 10, 50, 300


def subjects_at_ses(ses_sent):
    return [m["raw_data"].split("Subject: ", 1)[1].split("\r\n", 1)[0] for m in ses_sent()]


def test_two_smtp_nodes_two_workers_hold_the_plan_limit(config, cluster, ses_sent, reconfigure):
    config["plans"]["free"].update(daily_send_limit=LIMIT, send_rate_per_second=100000, send_burst=100000)
    reconfigure()
    account = make_account()
    nodes = [cluster.smtp(), cluster.smtp()]
    cluster.worker()
    cluster.worker()

    def client(n):
        results = []
        for i in range(PER_CLIENT):
            node = nodes[(n + i) % 2]
            results.append((f"m-{n}-{i}",) + smtp_send(node.port, cluster.cafile, account.address, account.token,
                                                      ["rcpt@example.com"], subject=f"m-{n}-{i}"))
        return results

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = [r for batch in pool.map(client, range(CLIENTS)) for r in batch]

    accepted = [subject for subject, code, _ in results if code == 250]
    refused = [(code, text) for _, code, text in results if code != 250]
    assert len(accepted) == LIMIT
    assert len(refused) == CLIENTS * PER_CLIENT - LIMIT
    assert {code for code, _ in refused} == {550}
    assert all(text.startswith(f"5.4.5 Daily sending quota exceeded ({LIMIT}/{LIMIT}") for _, text in refused)

    wait_until(lambda: len(ses_sent()) >= LIMIT, timeout=120, interval=0.5, what="300 messages at SES")

    def all_sent():
        with models.db.connection_context():
            statuses = [r.status for r in models.OutboundEmail.select(models.OutboundEmail.status)]
        return statuses if statuses.count("sent") == LIMIT else None

    wait_until(all_sent, timeout=60, what="every row sent")
    at_ses = subjects_at_ses(ses_sent)
    assert sorted(at_ses) == sorted(accepted), "each accepted message relayed exactly once"
    with models.db.connection_context():
        assert models.sends_today(account.user) == LIMIT
        assert models.OutboundEmail.select().count() == LIMIT


def test_failed_auth_throttle_is_shared_across_smtp_nodes(config, cluster):
    account = make_account()
    nodes = [cluster.smtp(INBOXLAYER_SMTP_MAX_AUTH_FAILURES=4), cluster.smtp(INBOXLAYER_SMTP_MAX_AUTH_FAILURES=4)]
    replies = []
    for attempt in range(6):
        node = nodes[attempt % 2]
        try:
            client = smtplib.SMTP("127.0.0.1", node.port, timeout=30)
        except smtplib.SMTPConnectError as exc:  # refused at the greeting
            replies.append((exc.smtp_code, exc.smtp_error.decode()))
            continue
        with client:
            client.starttls(context=ssl.create_default_context(cafile=str(cluster.cafile)))
            client.ehlo()
            plain = base64.b64encode(f"\0{account.address}\0il_wrong{attempt}".encode()).decode()
            code, text = client.docmd("AUTH", f"PLAIN {plain}")
            replies.append((code, text.decode()))
    # four failures spread over both nodes, then both nodes refuse this client address
    assert replies == [(535, "5.7.8 Authentication credentials invalid")] * 4 + \
        [(421, "4.7.0 Too many failed authentication attempts")] * 2
