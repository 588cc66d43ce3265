"""The admin CLI as operators script it: a real `inboxlayer` child process against the test database."""
import json
import subprocess
import sys

import models
from core import accounts

CLI = [sys.executable, "-m", "cli"]


def run(args, env, stdin=None):
    return subprocess.run(CLI + args, env=env, input=stdin, capture_output=True, text=True, timeout=120)


def test_cli_help_lists_commands(subprocess_env):
    result = run(["--help"], subprocess_env)
    assert result.returncode == 0
    for command in ("db", "users", "tokens", "inboxes", "web", "smtpd", "worker", "dev"):
        assert command in result.stdout


def test_cli_users_tokens_inboxes_bootstrap(subprocess_env):
    env = subprocess_env
    assert run(["db", "init"], env).returncode == 0
    created = run(["users", "create", "Ops@Example.com", "--password-stdin", "--json"], env, "long enough pw\n")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["email"] == "ops@example.com"

    dup = run(["users", "create", "ops@example.com", "--password-stdin"], env, "long enough pw\n")
    assert dup.returncode == 1
    assert dup.stderr.strip() == "error: a user 'ops@example.com' already exists"

    token = run(["tokens", "create", "ops@example.com", "--name", "ci", "--quiet"], env)
    assert token.returncode == 0
    full = token.stdout.strip()
    assert full.startswith("il_") and len(full) > 40 and "\n" not in full

    listed = run(["tokens", "list", "ops@example.com", "--json"], env)
    rows = json.loads(listed.stdout)
    assert [r["name"] for r in rows] == ["ci"]
    assert full not in listed.stdout and full.startswith(rows[0]["prefix"])
    table = run(["tokens", "list", "ops@example.com"], env)
    assert full not in table.stdout and rows[0]["prefix"] in table.stdout

    inbox = run(["inboxes", "create", "Bot@InboxLayer.dev", "--owner", "ops@example.com", "--json"], env)
    assert inbox.returncode == 0, inbox.stderr
    assert json.loads(inbox.stdout)["address"] == "bot@inboxlayer.dev"
    taken = run(["inboxes", "create", "bot@inboxlayer.dev", "--owner", "ops@example.com"], env)
    assert taken.returncode == 1 and taken.stderr.strip() == "error: bot@inboxlayer.dev is already taken"
    foreign = run(["inboxes", "create", "bot@elsewhere.example", "--owner", "ops@example.com"], env)
    assert foreign.returncode == 1 and "neither inboxlayer.dev nor a domain of ops@example.com" in foreign.stderr

    revoked = run(["tokens", "revoke", "ops@example.com", str(rows[0]["id"])], env)
    assert revoked.returncode == 0
    with models.db.connection_context():
        assert accounts.lookup_token(full) is None


def test_cli_errors_are_one_line(subprocess_env):
    short = run(["users", "create", "a@example.com", "--password-stdin"], subprocess_env, "short\n")
    assert short.returncode == 1
    assert short.stderr.strip() == "error: password must be at least 8 characters"
    unknown = run(["tokens", "create", "nobody@example.com", "--quiet"], subprocess_env)
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: no user 'nobody@example.com'"
    bad = run(["users", "create", "not-an-email", "--password-stdin"], subprocess_env, "long enough pw\n")
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid email 'not-an-email'")
    assert "Traceback" not in short.stderr + unknown.stderr + bad.stderr
