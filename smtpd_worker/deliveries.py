"""RQ job of webhook deliveries: ``deliver_webhook(id)``, enqueued by name by core.webhooks'
dispatcher. Orchestration only (claim, POST, record: core/webhooks.py); safe to run any number of
times, since only the run that claimed the row sends."""
import logging

from core import webhooks
from smtpd_worker.jobs import _with_db

log = logging.getLogger(__name__)


def deliver_webhook(delivery_id):
    claim = _with_db(webhooks.claim, delivery_id)
    if claim is None:
        return "skipped"
    result = webhooks.attempt(claim)  # no database connection held while the receiver answers
    outcome, notify = _with_db(webhooks.record, claim, result)
    extra = {"event_id": claim.envelope["id"], "endpoint": claim.endpoint.public_id}
    log.info("webhook %s to %s attempt %d: %s (%s)", claim.envelope["id"], claim.endpoint.public_id, claim.attempt,
             outcome, result.status_code or result.error, extra=extra)
    if notify is not None:
        try:
            webhooks.notify_owner(notify)
        except Exception:  # the job's boundary: the endpoint is disabled either way
            log.exception("could not email the owner of webhook endpoint %s", notify.public_id)
    return outcome
