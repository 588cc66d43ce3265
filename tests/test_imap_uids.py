"""IMAP UIDs ascend in commit order and are never reused (issue 16), on both databases.

An IMAP client syncs by UID: it remembers the highest UID it saw and later asks for what is above
it (UIDNEXT, ``UID FETCH n+1:*``). So a UID must never become visible after a higher one did, or
that client never sees the message. UIDs come from a per-inbox counter (models.ImapUidCounter)
taken in the transaction that stores the message; the counter's row lock makes the inbox's
commits take turns, so the order UIDs are handed out is the order they become visible.
"""
import io
import random
import threading
import time

import models
from core import mailbox
from core import submit
from tests.helpers import make_account


class Observer(threading.Thread):
    """Reads the Sent folder's UIDs over and over (as an IMAP session's NOOP would) and records
    every snapshot in which a newly visible UID is not above every UID seen before."""

    def __init__(self, inbox_id, done):
        super().__init__(daemon=True)
        self.inbox_id, self.done = inbox_id, done
        self.seen = set()
        self.violations = []
        self.snapshots = 0

    def look(self):
        visible = set(mailbox.uids(self.inbox_id, "sent"))
        new = visible - self.seen
        if new and self.seen and min(new) < max(self.seen):
            self.violations.append((sorted(new), max(self.seen)))
        assert self.seen <= visible, "a UID disappeared"
        self.seen |= visible
        self.snapshots += 1

    def run(self):
        while not self.done.is_set():
            self.look()
        self.look()


def test_uids_become_visible_in_ascending_order_under_concurrent_submissions(config):
    """Eight threads submit through core.submit (the path SMTP and REST share), 25 rounds each,
    while an observer reads the folder continuously: no UID ever appears below one already seen,
    and the UIDs are exactly 1..200 (none skipped, none reused).

    With the old scheme (UID = the Message row id) this test is only as strong as whatever else
    happens to serialise an inbox's sends: Postgres hands out ids at INSERT, so an id taken earlier
    can commit later. Today's single-statement submission also takes the account's send_usage row
    lock first, which hides that; the next test removes that accident and fails on UID = id."""
    account = make_account(plan="pro")
    done = threading.Event()
    observer = Observer(account.inbox.id, done)
    errors = []

    def sender(worker):
        try:
            for n in range(25):
                raw = (f"From: {account.address}\r\nTo: bob@example.com\r\nSubject: w{worker} n{n}\r\n\r\n"
                       f"round {n}\r\n").encode()
                submit.submit(account.user, account.inbox, account.address, ["bob@example.com"], io.BytesIO(raw),
                              "api")
        except Exception as exc:  # reported below, with the thread's name
            errors.append((worker, repr(exc)))

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(8)]
    observer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    observer.join(30)
    assert errors == []
    assert observer.violations == []
    assert sorted(observer.seen) == list(range(1, 201))
    assert observer.snapshots > 10  # it really watched the sends land, not just the end state
    with models.db.connection_context():
        assert models.ImapUidCounter.get_by_id(account.inbox.id).last_uid == 200


def test_a_uid_taken_earlier_is_visible_before_a_later_one_commits(config):
    """Transaction A takes a UID and stores its message, then stays open (as a submission that does
    more work in its transaction does); B stores a message and commits at once. B must not become
    visible before A: it waits for A's counter row, so its UID is the higher one and it commits after.

    Under the old scheme (UID = Message.id, no counter) B commits immediately with id = A's id + 1
    while A's row is still invisible: the observer sees B's UID alone, then A's lower UID later, and
    ``observer.violations`` is non-empty; B's commit also returns before A's, failing the ordering
    assertion. (Replace ``next_imap_uid`` by the id in ``store`` and core.mailbox to see it fail.)"""
    account = make_account()
    inbox_id = account.inbox.id
    a_stored, a_may_commit = threading.Event(), threading.Event()
    finished = []

    def store(label, hold):
        with models.db.connection_context():
            with models.db.atomic():
                uid = models.next_imap_uid(inbox_id)
                models.Message.insert(inbox=inbox_id, folder="sent", message_id=f"<{label}@x>", size=1,
                                      blob_key=f"k/{label}", imap_uid=uid).execute()
                if hold:
                    a_stored.set()
                    assert a_may_commit.wait(30)
            finished.append((label, uid, time.monotonic()))

    a = threading.Thread(target=store, args=("a", True))
    a.start()
    assert a_stored.wait(30)
    b = threading.Thread(target=store, args=("b", False))
    b.start()
    observer = Observer(inbox_id, threading.Event())
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # B has had ample time to commit, were it not waiting for A
        observer.look()
    a_may_commit.set()
    a.join(30)
    b.join(30)
    observer.look()
    assert [label for label, _, _ in finished] == ["a", "b"]  # B committed after A
    uids = {label: uid for label, uid, _ in finished}
    assert uids["a"] < uids["b"]
    assert observer.violations == []
    assert observer.seen == {uids["a"], uids["b"]}


def test_uids_are_never_reused_and_the_counter_survives_random_interleavings(config):
    """Many short transactions from several threads, each holding its UID for a random moment
    before committing: every UID is distinct, they are 1..n, and the observer never sees a gap filled."""
    account = make_account()
    inbox_id = account.inbox.id
    done = threading.Event()
    observer = Observer(inbox_id, done)
    rng = random.Random(16)
    delays = [[rng.random() * 0.01 for _ in range(15)] for _ in range(6)]

    def worker(index):
        for n, delay in enumerate(delays[index]):
            with models.db.connection_context():
                with models.db.atomic():
                    uid = models.next_imap_uid(inbox_id)
                    models.Message.insert(inbox=inbox_id, folder="sent", message_id=f"<{index}.{n}@x>", size=1,
                                          blob_key=f"k/{index}/{n}", imap_uid=uid).execute()
                    time.sleep(delay)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    observer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    observer.join(30)
    assert observer.violations == []
    assert sorted(observer.seen) == list(range(1, 91))
