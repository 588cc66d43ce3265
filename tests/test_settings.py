import dataclasses
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


# -- typed views -----------------------------------------------------------------------------------

def test_settings_typed_view_has_a_field_for_every_key():
    cfg = settings.load_config(environ={})
    typed = settings.Settings.from_dict(cfg)
    for name, section in settings.SECTIONS.items():
        assert sorted(section.__dataclass_fields__) == sorted(cfg[name])
        assert {key: getattr(getattr(typed, name), key) for key in cfg[name]} == {
            key: tuple(value) if isinstance(value, list) else value for key, value in cfg[name].items()}
    assert sorted([*settings.SECTIONS, "plans"]) == sorted(cfg)
    assert {name: dataclasses.asdict(plan) for name, plan in typed.plans.items()} == cfg["plans"]


def test_settings_typed_view_is_frozen():
    typed = settings.view(settings.load_config(environ={}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.relay.lease = 1
    with pytest.raises(TypeError):
        typed.plans["free"] = typed.plans["pro"]


def test_settings_typed_view_is_built_once_per_use(monkeypatch):
    monkeypatch.setattr(settings, "_current", None)  # the process's settings come back after the test
    monkeypatch.setattr(settings, "_current_view", None)
    cfg = settings.load_config(environ={"INBOXLAYER_RELAY_LEASE": "42"})
    settings.use(cfg)
    first = settings.current()
    assert settings.current() is first
    assert first == settings.view(cfg)  # the same settings, built anew by view()
    assert first.relay.lease == 42
    assert first.ses.sns_cert_hosts == ("sns.us-east-1.amazonaws.com",)


@pytest.mark.parametrize("change, read, expected", [
    (lambda c: c["dns"].__setitem__("timeout", 0.5), lambda s: s.dns.timeout, 0.5),
    (lambda c: c["relay"].update(lease=3, max_attempts=2), lambda s: (s.relay.lease, s.relay.max_attempts), (3, 2)),
    (lambda c: c["plans"]["free"].update(send_burst=7), lambda s: s.plan("free").send_burst, 7),
    (lambda c: c["plans"].__setitem__("team", {**c["plans"]["free"], "max_inboxes": 3}),
     lambda s: s.plan("team").max_inboxes, 3),
    (lambda c: c.__setitem__("web", {**c["web"], "ops_token": "t"}), lambda s: s.web.ops_token, "t"),
])
def test_settings_changed_dict_is_seen_after_use_again(monkeypatch, change, read, expected):
    monkeypatch.setattr(settings, "_current", None)
    monkeypatch.setattr(settings, "_current_view", None)
    cfg = settings.use(settings.load_config(environ={}))
    before = settings.current()
    change(cfg)
    assert settings.current() is before  # read once: a change is not seen until installed
    assert read(before) != expected
    settings.use(cfg)
    assert read(settings.current()) == expected
    assert read(before) != expected  # the old view is a snapshot


def test_settings_current_is_the_view_of_the_installed_dict(monkeypatch):
    monkeypatch.setattr(settings, "_current", None)
    monkeypatch.setattr(settings, "_current_view", None)
    cfg = settings.load_config(environ={"INBOXLAYER_SES_CONFIGURATION_SET": "events"})
    assert settings.use(cfg) is cfg
    assert settings.get() is cfg
    assert settings.current() == settings.view(cfg)
    assert settings.current().ses.configuration_set == "events"


def test_settings_use_of_a_bad_dict_keeps_the_installed_settings(monkeypatch):
    monkeypatch.setattr(settings, "_current", None)
    monkeypatch.setattr(settings, "_current_view", None)
    cfg = settings.use(settings.load_config(environ={}))
    installed = settings.current()
    broken = {name: table for name, table in cfg.items() if name != "relay"}
    with pytest.raises(KeyError):
        settings.use(broken)
    assert (settings.get(), settings.current()) == (cfg, installed)


def test_settings_plan_unknown_falls_back_to_default_plan():
    typed = settings.view(settings.load_config(environ={"INBOXLAYER_SERVER_DEFAULT_PLAN": "pro"}))
    assert typed.plan("nope") == typed.plans["pro"]
    assert typed.plan(None) == typed.plans["pro"]
    assert typed.plan("free").daily_send_limit == 500


def test_settings_typed_accepts_a_view_a_dict_or_nothing(monkeypatch):
    monkeypatch.setattr(settings, "_current", None)
    monkeypatch.setattr(settings, "_current_view", None)
    settings.use(settings.load_config(environ={}))
    other = settings.load_config(environ={"INBOXLAYER_RELAY_LEASE": "5"})
    other_view = settings.view(other)
    assert settings.typed(other_view) is other_view
    assert settings.typed(other).relay.lease == 5
    assert settings.typed() is settings.current()


def test_settings_section_answers_by_key_like_its_table():
    ses = settings.view(settings.load_config(environ={})).ses
    assert (ses["region"], ses["read_timeout"]) == ("us-east-1", 120)
    with pytest.raises(KeyError):
        ses["no_such_key"]
