import subprocess
import sys

import pytest

import settings


def test_settings_defaults_match_design():
    cfg = settings.load_config(environ={})
    assert cfg["server"]["default_domain"] == "inboxlayer.dev"
    assert cfg["smtp"]["max_message_size"] == 26214400
    assert cfg["smtp"]["max_recipients"] == 100
    assert cfg["smtp"]["starttls_port"] == 2587
    assert cfg["smtp"]["tls_port"] == 2465
    assert cfg["database"]["url"] == "sqlite:///var/inboxlayer.db"


def test_settings_env_overrides_apply_with_types():
    cfg = settings.load_config(environ={
        "INBOXLAYER_SMTP_MAX_MESSAGE_SIZE": "1024",
        "INBOXLAYER_PLANS_FREE_DAILY_SEND_LIMIT": "7",
        "INBOXLAYER_PLANS__PRO__SEND_BURST": "3",
        "INBOXLAYER_SES_SNS_CERT_HOSTS": "a.example, b.example",
        "DATABASE_URL": "postgresql://u@h/db",
        "REDIS_URL": "redis://h:1/2",
        "PORT": "9999",
    })
    assert cfg["smtp"]["max_message_size"] == 1024
    assert cfg["plans"]["free"]["daily_send_limit"] == 7
    assert cfg["plans"]["pro"]["send_burst"] == 3
    assert cfg["ses"]["sns_cert_hosts"] == ["a.example", "b.example"]
    assert cfg["database"]["url"] == "postgresql://u@h/db"
    assert cfg["redis"]["url"] == "redis://h:1/2"
    assert cfg["web"]["port"] == 9999


@pytest.mark.parametrize("environ, message", [
    ({"INBOXLAYER_SMTP_MAX_MESSAGE_SIZE": "abc"}, "INBOXLAYER_SMTP_MAX_MESSAGE_SIZE='abc': expected int"),
    ({"INBOXLAYER_SMTP_NO_SUCH_KEY": "1"}, "unknown setting 'smtp.no_such_key'"),
    ({"INBOXLAYER_NOSECTION_KEY": "1"}, "unknown setting section 'nosection'"),
    ({"INBOXLAYER_SMTP_STARTTLS_PORT": "25"}, "port 25 is reserved for inbound delivery"),
    ({"PORT": "eighty"}, "PORT='eighty': expected int"),
    ({"INBOXLAYER_RELAY_LEASE": "0"}, "relay.lease = 0: a claim must last at least 1 second"),
])
def test_settings_bad_env_names_the_key(environ, message):
    with pytest.raises(settings.SettingsError) as info:
        settings.load_config(environ=environ)
    assert message in str(info.value)


def test_settings_bad_file_names_key_and_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[smtp]\nmax_recipients = "many"\n')
    with pytest.raises(settings.SettingsError) as info:
        settings.load_config(path=str(path), environ={})
    assert str(info.value) == f"{path}: smtp.max_recipients = 'many': expected int"
    path.write_text('[smtp]\nbogus = 1\n')
    with pytest.raises(settings.SettingsError) as info:
        settings.load_config(path=str(path), environ={})
    assert str(info.value) == f"{path}: unknown setting 'smtp.bogus'"


def test_settings_file_may_add_a_plan(tmp_path):
    path = tmp_path / "plans.toml"
    path.write_text("[plans.team]\ndaily_send_limit = 42\n")
    cfg = settings.load_config(path=str(path), environ={})
    assert cfg["plans"]["team"] == {**cfg["plans"]["free"], "daily_send_limit": 42}


def test_cli_bad_config_is_one_line_exit_2(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "INBOXLAYER_SMTP_MAX_MESSAGE_SIZE": "abc", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "cli", "db", "init"], env=env, capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == ["error: configuration error: environment INBOXLAYER_SMTP_MAX_MESSAGE_SIZE='abc': expected int"]
