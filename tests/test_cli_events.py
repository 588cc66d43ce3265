"""`inboxlayer events tail` and `inboxlayer webhooks ...`: the client CLI as a child process
against the real API server."""
import json
import subprocess
import sys
import threading

from tests.fixtures_api import ROOT
from tests.fixtures_api import send_body
from tests.helpers import wait_until


def _client_env(subprocess_env, cli_home, api_server, token):
    return {**subprocess_env, "INBOXLAYER_HOME": str(cli_home), "INBOXLAYER_API_URL": api_server,
            "INBOXLAYER_TOKEN": token, "COLUMNS": "200", "NO_COLOR": "1"}


def test_cli_events_tail_follow_shows_a_new_send(config, api, api_server, account, subprocess_env, cli_home):
    api.post(f"/v1/inboxes/{account.address}/send", json=send_body())  # before: not printed with --follow
    wait_until(lambda: api.get("/v1/events").json()["data"], what="the first event in the feed")
    child = subprocess.Popen([sys.executable, "-m", "cli", "events", "tail", "--follow", "--json"], cwd=ROOT,
                             env=_client_env(subprocess_env, cli_home, api_server, account.token),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True).start()
    try:
        # It has read to the end of the feed once it says it is following.
        assert child.stderr.readline() == "following events (Ctrl-C to stop)\n"
        sent = api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).json()

        printed = wait_until(lambda: [json.loads(line) for line in list(lines)
                                      if json.loads(line)["outbound"] == sent["id"]], timeout=30,
                             what="the new send in the tail")
    finally:
        child.terminate()
        child.wait(10)
    assert [(e["type"], e["inbox"]) for e in printed] == [("outbound.queued", account.address)]
    assert printed[0]["data"]["id"] == sent["id"]
    assert all(json.loads(line)["outbound"] == sent["id"] for line in lines)  # the earlier send is not shown


def test_cli_webhooks_create_list_delete(config, api, api_server, account, subprocess_env, cli_home, reconfigure):
    config["webhooks"]["allow_loopback"] = True
    reconfigure()
    env = _client_env(subprocess_env, cli_home, api_server, account.token)

    def run(*args):
        return subprocess.run([sys.executable, "-m", "cli", "webhooks", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    created = run("create", "http://127.0.0.1:9/hook", "--events", "outbound.sent,outbound.bounced", "--json")
    assert created.returncode == 0, created.stderr
    endpoint = json.loads(created.stdout)
    assert endpoint["secret"].startswith("whsec_") and endpoint["events"] == ["outbound.sent", "outbound.bounced"]
    listed = run("list", "--json")
    assert [w["id"] for w in json.loads(listed.stdout)["data"]] == [endpoint["id"]]
    refused = run("create", "http://10.0.0.1/hook")
    assert refused.returncode == 1 and "public addresses only" in refused.stderr
    deleted = run("delete", endpoint["id"])
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(run("list", "--json").stdout)["data"] == []
