"""One display-name rule for every front-end that sets one: the dashboard form, POST /v1/inboxes and
`inboxlayer inboxes create` (core.accounts.clean_display_name). The same table drives all three, so none of
them can accept what another refuses."""
import json
import subprocess
import sys

import pytest

import models
from core import accounts

BIDI_CONTROLS = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069",
                 "\u200e", "\u200f", "\u061c"]
REFUSED = [  # (display name, the reason every front-end gives)
    ("=?utf-8?q?Support?=", "must not contain RFC 2047 encoded-words"),
    ("Bank =?UTF-8?B?U3VwcG9ydA==?= Desk", "must not contain RFC 2047 encoded-words"),
    ("line\r\nBcc: x@example.com", "must be one line without control characters"),
    ("tab\x07bell", "must be one line without control characters"),
    ("c1\x85next", "must be one line without control characters"),
    ("para\u2029graph", "must be one line without control characters"),
    ("d" * 101, "must be at most 100 characters"),
    *[(f"Invoice{c}fdp.exe", f"must not contain bidirectional control characters (U+{ord(c):04X})")
      for c in BIDI_CONTROLS],
]
ACCEPTED = [  # (display name, as stored)
    ("Jürgen Groß", "Jürgen Groß"),
    ('The "Agent" @ Work', 'The "Agent" @ Work'),
    ("  Support \t  Bot ", "Support Bot"),
    ("代理人" * 30, "代理人" * 30),
    ("\U0001F468\u200d\U0001F4BB Agent", "\U0001F468\u200d\U0001F4BB Agent"),  # a ZWJ emoji sequence is fine
    ("=? not an encoded word", "=? not an encoded word"),
]


def stored_display_name(address):
    with models.db.connection_context():
        return models.Inbox.get(models.Inbox.address == address).display_name


@pytest.mark.parametrize("name, reason", REFUSED)
def test_display_name_refused_by_dashboard(web, name, reason):
    response = web.post("/inboxes/", {"local_part": "bot", "domain": "0", "display_name": name})
    assert response.status_code == 422
    assert f'<p class="error">{reason[0].upper()}{reason[1:]}' in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Inbox.select().count() == 0


@pytest.mark.parametrize("name, reason", REFUSED)
def test_display_name_refused_by_api(api, name, reason):
    response = api.post("/v1/inboxes", json={"name": "bot", "display_name": name})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["message"].startswith(f"display_name: {reason}")
    with models.db.connection_context():
        assert not models.Inbox.select().where(models.Inbox.local_part == "bot").exists()


@pytest.mark.parametrize("name, stored", ACCEPTED)
def test_display_name_accepted_alike_by_dashboard_and_api(web, api, name, stored):
    assert web.post("/inboxes/", {"local_part": "web-bot", "domain": "0", "display_name": name}).status_code == 302
    assert api.post("/v1/inboxes", json={"name": "api-bot", "display_name": name}).status_code == 201
    assert stored_display_name("web-bot@inboxlayer.dev") == stored_display_name("api-bot@inboxlayer.dev") == stored


def test_display_name_refused_by_cli(subprocess_env, account, subtests):
    """The admin CLI reaches the same rule through accounts.create_inbox."""
    for name, reason in [REFUSED[0], REFUSED[2], REFUSED[-8]]:  # encoded-word, CRLF, U+202E
        with subtests.test(name=name):
            done = subprocess.run([sys.executable, "-m", "cli", "inboxes", "create", "bot@inboxlayer.dev", "--owner",
                                   account.email, "--display-name", name], env=subprocess_env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 1
            line = done.stderr.strip()
            assert "\n" not in line
            assert line.startswith(f"error: invalid address 'bot@inboxlayer.dev': the display name {reason}")
    ok = subprocess.run([sys.executable, "-m", "cli", "inboxes", "create", "bot@inboxlayer.dev", "--owner",
                         account.email, "--display-name", " Jürgen \t Groß ", "--json"], env=subprocess_env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["display_name"] == "Jürgen Groß"


def test_display_name_rule_bounds_its_work():
    with pytest.raises(accounts.DisplayNameError) as refused:
        accounts.clean_display_name("x" * 10_000_000)
    assert refused.value.reason == "must be at most 100 characters"
