"""A rolling restart under load loses no accepted message and relays none twice."""
import signal
import smtplib
import threading
import time
from types import SimpleNamespace

import requests

import models
from tests.fixtures_ops import smtp_send
from tests.fixtures_smtp import RawClient
from tests.helpers import make_account
from tests.helpers import wait_until

CLIENTS, PER_CLIENT = 4, 25
TRANSIENT = (ConnectionError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError, OSError)


def metric(port, sample):
    """The value of one sample (name with labels) on a process's /metrics, 0 if absent."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(sample + " "))


class Fleet:
    """The SMTP nodes clients may use right now (what a load balancer would route to)."""

    def __init__(self, node):
        self.lock = threading.Lock()
        self.nodes = [node]

    def pick(self, n):
        with self.lock:
            return self.nodes[n % len(self.nodes)]

    def replace(self, old, new):
        with self.lock:
            self.nodes = [new] + [x for x in self.nodes if x is not old]


def send_with_retries(fleet, n, cafile, account, subject, log):
    """What a well-behaved client does: retry 4xx and dropped connections, on any node."""
    for attempt in range(200):
        node = fleet.pick(n + attempt)
        try:
            code, text = smtp_send(node.port, cafile, account.address, account.token, ["rcpt@example.com"],
                                   subject=subject)
        except TRANSIENT as exc:
            log.append((subject, "transient", repr(exc)))
            time.sleep(0.05)  # client back-off before the retry
            continue
        if code == 250:
            return text.rsplit(" ", 1)[1]
        log.append((subject, code, text))
        assert 400 <= code < 500, f"permanent refusal during a restart: {code} {text}"
        time.sleep(0.05)
    raise AssertionError(f"{subject} never accepted: {log[-3:]}")


def test_rolling_restart_loses_nothing_and_sends_nothing_twice(config, cluster, ses_sent, reconfigure):
    config["plans"]["free"].update(daily_send_limit=100000, send_rate_per_second=100000, send_burst=100000)
    reconfigure()
    account = make_account()
    old_smtp = cluster.smtp()
    old_worker = cluster.worker()
    steady_worker = cluster.worker()
    fleet = Fleet(old_smtp)

    # An authenticated client idling on the old node must be told 421 and may then retry.
    idle = RawClient(SimpleNamespace(host="127.0.0.1", starttls_port=old_smtp.port, cafile=cluster.cafile))
    assert idle.reply().startswith("220 ")
    idle.starttls()
    idle.cmd("EHLO idle.example")
    assert idle.login(account.address, account.token) == "235 2.7.0 Authentication successful"

    accepted, retries = {}, []
    lock = threading.Lock()

    def client(n):
        for i in range(PER_CLIENT):
            subject = f"r-{n}-{i}"
            public_id = send_with_retries(fleet, n, cluster.cafile, account, subject, retries)
            with lock:
                assert subject not in accepted
                accepted[subject] = public_id

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    wait_until(lambda: len(accepted) >= CLIENTS * PER_CLIENT // 4, timeout=60, what="a quarter of the load")

    new_smtp = cluster.smtp()
    accepted_before = metric(new_smtp.metrics_port, 'inboxlayer_messages_accepted_total{via="smtp"}')
    fleet.replace(old_smtp, new_smtp)
    assert cluster.stop(old_smtp, signal.SIGTERM) == 0  # drains and exits cleanly
    assert idle.reply() == "421 4.3.2 Server shutting down, try again later"
    assert idle.is_closed()
    idle.close()

    wait_until(lambda: len(accepted) >= CLIENTS * PER_CLIENT // 2, timeout=60, what="half of the load")
    cluster.stop(old_worker, signal.SIGTERM)
    new_worker = cluster.worker()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert len(accepted) == CLIENTS * PER_CLIENT

    # the client that was cut off retries on the new node and succeeds
    retried = send_with_retries(fleet, 0, cluster.cafile, account, "after-421", retries)
    accepted["after-421"] = retried

    def all_relayed():
        with models.db.connection_context():
            rows = {r.public_id: r.status for r in models.OutboundEmail.select()}
        return rows if set(rows) == set(accepted.values()) and set(rows.values()) == {"sent"} else None

    try:
        wait_until(all_relayed, timeout=120, interval=0.5, what="every accepted message relayed")
    except AssertionError:
        with models.db.connection_context():
            stuck = [(r.public_id, r.status, r.attempts, r.last_error) for r in models.OutboundEmail.select()
                     .where(models.OutboundEmail.status != "sent")]
        raise AssertionError(f"not relayed: {stuck}\n{cluster.logs()[-6000:]}") from None
    at_ses = sorted(m["raw_data"].split("Subject: ", 1)[1].split("\r\n", 1)[0] for m in ses_sent())
    assert at_ses == sorted(accepted), "every 250 relayed exactly once"

    # the counters moved while this happened
    assert metric(new_smtp.metrics_port, 'inboxlayer_messages_accepted_total{via="smtp"}') > accepted_before
    assert metric(new_smtp.metrics_port, 'inboxlayer_smtp_sessions_total{listener="starttls"}') > 0
    workers = (steady_worker, new_worker)
    assert sum(metric(w.metrics_port, 'inboxlayer_relay_attempts_total{outcome="sent"}') for w in workers) > 0
    assert sum(metric(w.metrics_port, "inboxlayer_relay_seconds_count") for w in workers) > 0

    logs = cluster.logs()
    assert account.token not in logs
    assert account.token[len("il_"):] not in logs
