import subprocess
import sys

from smtpd_worker import metrics


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


def test_readyz_unavailable_when_ses_unreachable(app, config, free_tcp_port):
    config["ses"]["endpoint_url"] = f"http://127.0.0.1:{free_tcp_port}"  # nothing listens there
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


def test_trusted_proxy_supplies_client_address(config):
    from flask import request

    from webapp import create_app

    seen = []
    config["web"]["trusted_proxies"] = 1
    app = create_app({**config, "TESTING": True})

    @app.get("/_whoami")
    def whoami():
        seen.append(request.remote_addr)
        return "ok"

    app.test_client().get("/_whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                          environ_base={"REMOTE_ADDR": "10.0.0.2"})
    config["web"]["trusted_proxies"] = 0
    direct = create_app({**config, "TESTING": True})
    direct.add_url_rule("/_whoami", view_func=whoami)
    direct.test_client().get("/_whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                             environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert seen == ["203.0.113.9", "10.0.0.2"]
