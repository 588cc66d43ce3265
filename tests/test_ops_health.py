import subprocess
import sys

from core import metrics


def test_healthz_answers_without_dependencies(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_reports_each_dependency(client):
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "redis", "ses"}
    assert all(check["ok"] for check in body["checks"].values())


def test_readyz_unavailable_when_ses_unreachable(app, config, free_tcp_port, reconfigure):
    config["ses"]["endpoint_url"] = f"http://127.0.0.1:{free_tcp_port}"  # nothing listens there
    reconfigure()
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["ses"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_metrics_exposes_counters(client):
    metrics.MESSAGES_ACCEPTED.labels(via="api").inc()
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert "inboxlayer_messages_accepted_total{via=\"api\"}" in text
    assert "inboxlayer_relay_queue_depth 0.0" in text


def test_cli_health_checks_services(subprocess_env):
    result = subprocess.run([sys.executable, "-m", "cli", "health"], env=subprocess_env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("database", "redis", "ses"):
        assert f"{name}" in result.stdout
    assert "FAIL" not in result.stdout


def test_trusted_proxy_supplies_client_address(config, reconfigure):
    from flask import request

    from webapp import create_app

    seen = []
    config["web"]["trusted_proxies"] = 1
    reconfigure()
    app = create_app({**config, "TESTING": True})

    @app.get("/_whoami")
    def whoami():
        seen.append(request.remote_addr)
        return "ok"

    app.test_client().get("/_whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                          environ_base={"REMOTE_ADDR": "10.0.0.2"})
    config["web"]["trusted_proxies"] = 0
    reconfigure()
    direct = create_app({**config, "TESTING": True})
    direct.add_url_rule("/_whoami", view_func=whoami)
    direct.test_client().get("/_whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                             environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert seen == ["203.0.113.9", "10.0.0.2"]


def test_cli_health_exits_nonzero_when_a_check_fails(subprocess_env, free_tcp_port):
    env = {**subprocess_env, "INBOXLAYER_SES_ENDPOINT_URL": f"http://127.0.0.1:{free_tcp_port}"}  # nobody there
    result = subprocess.run([sys.executable, "-m", "cli", "health"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    (ses_line,) = [line for line in result.stdout.splitlines() if line.startswith("ses")]
    assert "FAIL" in ses_line
    assert "Traceback" not in result.stdout + result.stderr


PUBLIC_CLIENT = {"REMOTE_ADDR": "203.0.113.7"}


def test_readyz_shows_details_only_to_operators(app, config, free_tcp_port, reconfigure):
    config["ses"]["endpoint_url"] = f"http://127.0.0.1:{free_tcp_port}"  # a failing check has exception text
    config["web"]["ops_token"] = "ops-secret"
    reconfigure()
    client = app.test_client()
    public = client.get("/readyz", environ_base=PUBLIC_CLIENT)
    assert public.status_code == 503
    assert public.get_json() == {"status": "unavailable", "checks": {
        "database": {"ok": True}, "redis": {"ok": True}, "ses": {"ok": False}}}
    for headers, environ in (({"Authorization": "Bearer ops-secret"}, PUBLIC_CLIENT),
                             ({}, {"REMOTE_ADDR": "127.0.0.1"}), ({}, {"REMOTE_ADDR": "::1"})):
        operator = client.get("/readyz", headers=headers, environ_base=environ)
        assert operator.status_code == 503
        assert "EndpointConnectionError" in operator.get_json()["checks"]["ses"]["detail"]
    # A wrong token, or loopback reached through a proxy nobody declared, is the public view.
    for headers, environ in (({"Authorization": "Bearer wrong"}, PUBLIC_CLIENT),
                             ({"X-Forwarded-For": "198.51.100.2"}, {"REMOTE_ADDR": "127.0.0.1"})):
        assert "detail" not in client.get("/readyz", headers=headers, environ_base=environ).get_json()["checks"]["ses"]


def test_readyz_public_answers_share_one_run_operators_get_a_fresh_one(app):
    """A public client polling /readyz must not turn each request into database, Redis and SES API
    calls (the SES account's API rate is every tenant's)."""
    client = app.test_client()
    runs = metrics.READINESS_RUNS._value.get
    client.get("/readyz", environ_base=PUBLIC_CLIENT)  # may start a fresh interval
    before = runs()
    answers = [client.get("/readyz", environ_base=PUBLIC_CLIENT) for _ in range(30)]
    assert {a.status_code for a in answers} == {200}
    assert runs() - before <= 1  # at most the one run that a closing interval forces, not 30
    for _ in range(3):
        assert client.get("/readyz", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
    assert runs() - before >= 3  # operators see the state now


def test_metrics_only_for_operators(app, config, reconfigure):
    client = app.test_client()
    refused = client.get("/metrics", environ_base=PUBLIC_CLIENT)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "forbidden"
    # No token configured: no bearer token opens it, whatever it is.
    assert client.get("/metrics", headers={"Authorization": "Bearer "}, environ_base=PUBLIC_CLIENT).status_code == 403
    config["web"]["ops_token"] = "ops-secret"
    reconfigure()
    assert client.get("/metrics", headers={"Authorization": "Bearer ops-secret"},
                      environ_base=PUBLIC_CLIENT).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "127.0.0.1"}).status_code == 200
