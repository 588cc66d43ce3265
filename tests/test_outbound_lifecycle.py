"""core/outbound.py is THE OutboundEmail lifecycle (issue 11): one vocabulary every reader takes
(docs, dashboard, API, OpenAPI, CLI), and transitions that are conditional UPDATEs on the real
database (SQLite and Postgres). The relay's end-to-end guarantees are pinned in test_relay_*.py
and test_events_sns.py; these tests pin the structure. Nothing is mocked."""
import ast
import datetime
import pathlib
import re

import pytest

import models
from cli import outbound as cli_outbound
from core import outbound
from core import outbound_vocabulary
from webapp.api import openapi
from tests.fixtures_relay import events_of
from tests.fixtures_relay import outbound as row_of

ROOT = pathlib.Path(__file__).resolve().parent.parent
LEASE = 60  # seconds
MAX_ATTEMPTS = 3


def table_names(markdown, header):
    """The backticked names in the first column of the table that starts with ``header``."""
    lines = markdown.split("\n")
    start = lines.index(header)
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    return names


# -- one vocabulary, read by everyone ---------------------------------------------------------

def test_outbound_statuses_relay_doc_table_lists_exactly_the_lifecycle():
    relay = (ROOT / "docs" / "relay.md").read_text()
    assert table_names(relay, "| status | meaning | `next_attempt_at` |") == list(outbound.STATUSES)


def test_outbound_statuses_api_doc_table_lists_exactly_the_lifecycle():
    api = (ROOT / "docs" / "api.md").read_text()
    assert table_names(api, "| status | meaning |") == list(outbound.STATUSES)


def test_outbound_event_types_relay_doc_table_lists_exactly_the_lifecycle():
    relay = (ROOT / "docs" / "relay.md").read_text()
    documented = table_names(relay, "| event | written when | detail |")
    assert sorted(documented) == sorted(outbound.EVENT_TYPES)
    assert len(documented) == len(set(documented))


def test_outbound_vocabulary_is_re_exported_by_core_outbound():
    for name in ("STATUSES", "ACTIVE", "FINAL", "UNDELIVERED", "RANK", "EVENT_TYPES", "STATUS_OF_SES_EVENT"):
        assert getattr(outbound, name) is getattr(outbound_vocabulary, name)
    assert set(outbound.RANK) == set(outbound.STATUSES)
    assert set(outbound.ACTIVE) | set(outbound.FINAL) | {outbound.SENT} == set(outbound.STATUSES)
    assert set(outbound.UNDELIVERED) < set(outbound.FINAL)


def test_outbound_vocabulary_imports_nothing():
    """The client CLI reads it: it must not bring peewee or Flask along (or anything at all)."""
    tree = ast.parse((ROOT / "core" / "outbound_vocabulary.py").read_text())
    assert [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))] == []


def _status_literals(path):
    """(line, names) of every tuple/list/set literal or dict with two or more OutboundEmail status
    (or lifecycle event type) strings in it: a copy of the vocabulary outside its home
    (core/outbound_vocabulary.py and the transitions in core/outbound.py)."""
    words = set(outbound.STATUSES) | set(outbound.EVENT_TYPES)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [*node.keys, *node.values]
        else:
            continue
        names = [i.value for i in items if isinstance(i, ast.Constant) and i.value in words]
        if len(names) >= 2:
            found.append((node.lineno, names))
    return found


SOURCES = sorted(p for p in [*ROOT.glob("*.py"), *(ROOT / "core").rglob("*.py"), *(ROOT / "webapp").rglob("*.py"),
                             *(ROOT / "smtpd_worker").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]
                 if p not in (ROOT / "core" / "outbound_vocabulary.py", ROOT / "core" / "outbound.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_outbound_status_lists_have_one_home(path):
    assert _status_literals(path) == []


def test_outbound_status_lists_check_finds_a_copy(tmp_path):
    copy = tmp_path / "copy.py"
    copy.write_text('STATUSES = ("queued", "sending", "sent")\nIN_FLIGHT = ["queued", "sending"]\n')
    assert _status_literals(copy) == [(1, ["queued", "sending", "sent"]), (2, ["queued", "sending"])]


def test_outbound_openapi_status_enums_are_the_lifecycle():
    document = openapi.document()
    assert document["components"]["schemas"]["Outbound"]["properties"]["status"]["enum"] == list(outbound.STATUSES)
    (status_param,) = [p for p in document["paths"]["/v1/outbound"]["get"]["parameters"] if p["name"] == "status"]
    assert status_param["schema"]["enum"] == list(outbound.STATUSES)


def test_outbound_api_unknown_status_is_422_naming_the_lifecycle(api, account):
    response = api.get("/v1/outbound", params={"status": "lost"})
    assert response.status_code == 422
    assert response.json()["error"]["message"] == f"status: must be one of {', '.join(outbound.STATUSES)}"


def test_outbound_dashboard_filter_offers_exactly_the_lifecycle(web):
    page = web.get("/outbound/").get_data(as_text=True)
    select = page[page.index('name="status"'):]
    select = select[:select.index("</select>")]
    assert re.findall(r'<option value="([a-z_]+)"', select) == list(outbound.STATUSES)


def test_outbound_cli_unknown_status_exits_2_naming_the_lifecycle(run_cli):
    result = run_cli("outbound", "list", "--status", "lost")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip() == f"error: --status must be one of {', '.join(outbound.STATUSES)}"
    assert (cli_outbound.STATUSES, cli_outbound.FINAL) == (outbound.STATUSES, outbound.FINAL)


def test_outbound_cli_styles_every_status():
    assert {status: cli_outbound.style_of(status) for status in outbound.STATUSES} == {
        "queued": "yellow", "sending": "yellow", "sent": "cyan", "delivered": "green",
        "bounced": "red", "complained": "red", "failed": "red", "sandboxed": "cyan"}


# -- transitions: conditional UPDATEs on the real database ------------------------------------

def _claim(row_id, attempts=MAX_ATTEMPTS):
    with models.db.connection_context():
        return outbound.claim(row_id, LEASE, attempts, "test:1")


def test_outbound_claim_held_row_second_claim_gets_none(relay_config, submit):
    row = submit()
    first = _claim(row.id)
    assert (first.attempt, row_of(row.id).status, row_of(row.id).attempts) == (1, "sending", 1)
    assert _claim(row.id) is None  # leased: nobody else gets it
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt"]


def test_outbound_release_hands_row_back_and_a_stale_release_writes_nothing(relay_config, submit):
    row = submit()
    claim = _claim(row.id)
    with models.db.connection_context():
        assert outbound.release(claim, "shutting down") is True
        assert outbound.release(claim, "again") is False  # no longer ours: nothing written
    released = row_of(row.id)
    assert (released.status, released.attempts, released.next_attempt_at) == ("queued", 0, None)
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "released"]


def test_outbound_results_of_a_lost_claim_do_not_move_the_row(relay_config, submit):
    row = submit()
    stale_claim = _claim(row.id)
    with models.db.connection_context():
        models.OutboundEmail.update(next_attempt_at=models.utcnow()).where(
            models.OutboundEmail.id == row.id).execute()  # the lease ran out
    newer = _claim(row.id)
    assert newer.attempt == 2
    with models.db.connection_context():
        assert outbound.retry(stale_claim, "Throttling: slow down", {"code": "Throttling", "status": 400}, 5) is False
        assert outbound.fail(stale_claim, "MessageRejected: no", {"code": "MessageRejected", "status": 400}) is False
        assert outbound.renew_lease(stale_claim, LEASE) == 0
        assert outbound.record_sent(stale_claim, "ses-old") is False
    after = row_of(row.id)
    assert (after.status, after.attempts, after.ses_message_id) == ("sending", 2, "ses-old")
    assert [t for t, _ in events_of(row.id)] == ["queued", "attempt", "possible_duplicate", "attempt", "sent"]


def test_outbound_claim_out_of_attempts_fails_an_interrupted_row(relay_config, submit):
    row = submit()
    _claim(row.id, attempts=1)
    with models.db.connection_context():
        models.OutboundEmail.update(next_attempt_at=models.utcnow()).where(
            models.OutboundEmail.id == row.id).execute()  # the worker died: its lease lapsed
    assert _claim(row.id, attempts=1) is None
    failed = row_of(row.id)
    assert (failed.status, failed.last_error) == ("failed", "gave up after 1 attempts; the last one was interrupted")
    assert events_of(row.id)[-1] == ("failed", {"message": failed.last_error, "attempts": 1})


def test_outbound_stale_lists_active_rows_without_progress(relay_config, submit):
    waiting, sent = submit(), submit()
    claim = _claim(sent.id)
    with models.db.connection_context():
        outbound.record_sent(claim, "ses-1")
        later = models.utcnow() + datetime.timedelta(seconds=1)
        assert outbound.stale(later, 10) == [(waiting.id, "queued")]
        assert outbound.stale(later - datetime.timedelta(hours=1), 10) == []


def test_outbound_apply_ses_event_moves_up_the_rank_only(relay_config, submit):
    row = submit()
    claim = _claim(row.id)
    with models.db.connection_context():
        outbound.record_sent(claim, "ses-1")

        def apply(kind, sns_id, reason=None):
            return outbound.apply_ses_event(kind, sns_id, "ses-1", None, {"sns_message_id": sns_id}, lambda: reason)

        assert apply("Bounce", "sns-1", "Bounce Permanent/General") == "applied"
        assert apply("Delivery", "sns-2") == "recorded"  # a late Delivery never overwrites a Bounce
        assert apply("Bounce", "sns-1") == "duplicate"
        assert apply("DeliveryDelay", "sns-3") == "recorded"
        assert apply("Subscription", "sns-4") == "recorded"
        assert outbound.apply_ses_event("Delivery", "sns-5", "ses-other", None, {}, lambda: None) == "unknown"
    settled = row_of(row.id)
    assert (settled.status, settled.last_error) == ("bounced", "Bounce Permanent/General")
    assert [t for t, _ in events_of(row.id)][-4:] == ["bounced", "delivered", "delivery_delayed", "ses_subscription"]
    assert events_of(row.id)[-1][1] == {"sns_message_id": "sns-4"}
