"""Settings: config.toml, then environment overrides, read once per process.

The defaults in config.toml are also the schema: a key that is not there is unknown, and an
override must have the type of its default. Mistakes stop start-up with one line naming the key
and where it came from (see ``SettingsError``).

``load_config`` returns a plain nested dict (what ``create_app`` and ``runtime.configure`` take);
code reads its typed, read-only view, built once when the dict is installed: ``settings.current()``
for the process's settings (``current().relay.lease``, ``current().plan(user.plan)``; installed by
``use(config)``, which runtime.configure calls), ``webapp.views.app_settings()`` for a web app's.
"""
import dataclasses
import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

ENV_PREFIX = "INBOXLAYER_"
DEFAULT_CONFIG_PATH = Path(__file__).with_name("config.toml")
# Variables under our prefix that belong to the CLI client, not to the server settings.
CLIENT_ENV_NAMES = {"INBOXLAYER_TOKEN", "INBOXLAYER_API_URL", "INBOXLAYER_CONFIG", "INBOXLAYER_HOME"}
# Conventional platform variables (Heroku-style) mapped onto settings.
PLATFORM_ENV = {"DATABASE_URL": ("database", "url"), "REDIS_URL": ("redis", "url"), "PORT": ("web", "port")}


class SettingsError(Exception):
    """A setting is unknown or has the wrong type. The message names the key and its source."""


def load_config(path=None, environ=None):
    """Return the settings as a nested dict: defaults, then ``path`` (if not the defaults), then env."""
    environ = os.environ if environ is None else environ
    defaults = _read_toml(DEFAULT_CONFIG_PATH)
    config = json.loads(json.dumps(defaults))  # deep copy of plain data
    path = path or environ.get("INBOXLAYER_CONFIG")
    if path and Path(path).resolve() != DEFAULT_CONFIG_PATH.resolve():
        _merge_file(config, defaults, _read_toml(Path(path)), str(path))
    for name, (section, key) in PLATFORM_ENV.items():
        if environ.get(name):
            config[section][key] = _coerce(environ[name], defaults[section][key], name)
    for name, raw in sorted(environ.items()):
        if name.startswith(ENV_PREFIX) and name not in CLIENT_ENV_NAMES:
            section_path, key = _env_target(name, config)
            target = config
            for part in section_path:
                target = target[part]
            target[key] = _coerce(raw, target[key], name)
    return derive(config)


def derive(config):
    """Fill settings whose default depends on others (empty string = derived)."""
    data_dir = Path(config["server"]["data_dir"])
    config["database"]["url"] = config["database"]["url"] or f"sqlite:///{data_dir / 'inboxlayer.db'}"
    config["redis"]["url"] = config["redis"]["url"] or "redis://127.0.0.1:6379/0"
    config["blobs"]["path"] = config["blobs"]["path"] or str(data_dir / "blobs")
    config["smtp"]["public_host"] = config["smtp"]["public_host"] or config["server"]["hostname"]
    web = config["web"]
    web["public_url"] = (web["public_url"] or f"http://{web['host']}:{web['port']}").rstrip("/")
    for port_key in ("starttls_port", "tls_port"):
        if config["imap"][port_key] == 25:
            raise SettingsError(f"imap.{port_key} = 25: port 25 is reserved for inbound delivery")
        if config["smtp"][port_key] == 25:
            raise SettingsError(
                f"smtp.{port_key} = 25: port 25 is reserved for inbound delivery and never accepts submissions")
    if config["relay"]["lease"] < 1:
        raise SettingsError(f"relay.lease = {config['relay']['lease']}: a claim must last at least 1 second")
    if config["relay"]["concurrency"] < 1:
        raise SettingsError(f"relay.concurrency = {config['relay']['concurrency']}: a worker needs at least 1 job in flight")
    if config["relay"]["max_send_rate"] < 0:
        raise SettingsError(f"relay.max_send_rate = {config['relay']['max_send_rate']}: expected 0 (ask SES) or more")
    if config["webhooks"]["lease"] < 16:
        raise SettingsError(f"webhooks.lease = {config['webhooks']['lease']}: an attempt may take 15 seconds; "
                            "the lease must be longer")
    if config["server"]["default_plan"] not in config["plans"]:
        raise SettingsError(f"server.default_plan = {config['server']['default_plan']!r} is not a key of [plans]")
    server = config["server"]
    if server["environment"] not in ENVIRONMENTS:
        raise SettingsError(f"server.environment = {server['environment']!r}: expected production or development "
                            "(or empty: production when ses.endpoint_url is empty)")
    # Talking to real AWS is production unless the operator says otherwise; the dev stack and the
    # tests point SES at the moto stand-in.
    server["environment"] = server["environment"] or ("development" if config["ses"]["endpoint_url"] else "production")
    return config


ENVIRONMENTS = ("", "production", "development")


def web_production_problems(config):
    """What stops the web process from starting in production, one line each (empty = none)."""
    if config["server"]["environment"] != "production":
        return []
    problems = []
    if not config["web"]["secret_key"]:
        problems.append("web.secret_key is empty: set INBOXLAYER_WEB_SECRET_KEY (e.g. `openssl rand -hex 32`); "
                        "without it each web worker signs sessions with its own key and logins break")
    if not config["ses"]["sns_topic_arns"]:
        problems.append("ses.sns_topic_arns is empty: set INBOXLAYER_SES_SNS_TOPIC_ARNS to the SNS topic(s) your "
                        "SES configuration set publishes to; the SES webhook refuses every other topic")
    return problems


def check_web_production(config):
    """Raise SettingsError (one line naming every problem) unless web may start with ``config``."""
    problems = web_production_problems(config)
    if problems:
        raise SettingsError("; ".join(problems))


def _read_toml(path):
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from None


def _merge_file(config, defaults, overrides, source, prefix=""):
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        default = defaults.get(key)
        if default is None and prefix == "plans.":
            default = defaults[next(iter(defaults))]  # a new plan takes the keys of the first one
            config[key] = dict(default)
        if default is None:
            raise SettingsError(f"{source}: unknown setting {dotted!r}")
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise SettingsError(f"{source}: {dotted!r} must be a table")
            _merge_file(config[key], default, value, source, dotted + ".")
        else:
            config[key] = _check_type(value, default, f"{source}: {dotted}")


def _env_target(name, config):
    """Map INBOXLAYER_SMTP_MAX_MESSAGE_SIZE to (("smtp",), "max_message_size")."""
    rest = name[len(ENV_PREFIX):].lower()
    if "__" in rest:  # Flask's nesting convention: INBOXLAYER_PLANS__PRO__SEND_BURST
        *sections, key = rest.split("__")
    else:
        section, _, key = rest.partition("_")
        sections = [section]
        if section == "plans":
            plan, _, key = key.partition("_")
            sections.append(plan)
    target = config
    for part in sections:
        if not isinstance(target, dict) or part not in target:
            raise SettingsError(f"environment {name}: unknown setting section {'.'.join(sections)!r}")
        target = target[part]
    if key not in target:
        raise SettingsError(f"environment {name}: unknown setting {'.'.join(sections + [key])!r}")
    return tuple(sections), key


def _coerce(raw, default, source):
    """Parse an environment string into the type of the setting's default."""
    try:
        if isinstance(default, bool):
            lowered = raw.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError
            return lowered in {"1", "true", "yes", "on"}
        if isinstance(default, int):
            return int(raw.strip())
        if isinstance(default, float):
            return float(raw.strip())
        if isinstance(default, list):
            value = json.loads(raw) if raw.strip().startswith("[") else [p.strip() for p in raw.split(",") if p.strip()]
            return _check_type(value, default, source)
    except (ValueError, json.JSONDecodeError):
        raise SettingsError(f"environment {source}={raw!r}: expected {type(default).__name__}") from None
    return raw


def _check_type(value, default, source):
    expected = type(default)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not expected or (isinstance(value, list) and not all(isinstance(v, str) for v in value)):
        raise SettingsError(f"{source} = {value!r}: expected {expected.__name__}")
    return value


# -- Typed views ------------------------------------------------------------------------------------
# The dict above stays the source: load_config returns it, create_app and runtime.configure take it,
# tests hand in their own. Code reads the typed view of it: frozen dataclasses, one per section,
# built once from the dict when it is installed: ``use(config)`` (runtime.configure) for the process
# (``current()``), ``create_app(config)`` for its app (webapp.views.app_settings()). Changing the
# dict afterwards changes nothing until it is installed again.


class Section:
    """Base of the section views. ``section["key"]`` works too, so helpers that take a settings
    table (``core.ses.policy``, ``core.health``) take a section view as well."""

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]):
        """The view of ``table``. Keys without a field are left out (tests/test_settings.py checks
        that every key of config.toml has one)."""
        values = {name: table[name] for name in cls.__dataclass_fields__ if name in table}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@dataclasses.dataclass(frozen=True)
class Server(Section):
    hostname: str
    default_domain: str
    data_dir: str
    log_format: str
    log_level: str
    default_plan: str
    environment: str


@dataclasses.dataclass(frozen=True)
class Database(Section):
    url: str
    max_connections: int
    prepare_statements: bool


@dataclasses.dataclass(frozen=True)
class Redis(Section):
    url: str
    prefix: str


@dataclasses.dataclass(frozen=True)
class Web(Section):
    host: str
    port: int
    secret_key: str
    public_url: str
    login_max_failures: int
    signups_per_hour: int
    trusted_proxies: int
    ops_token: str


@dataclasses.dataclass(frozen=True)
class Smtp(Section):
    host: str
    public_host: str
    starttls_port: int
    tls_port: int
    cert_file: str
    key_file: str
    max_message_size: int  # bytes
    max_recipients: int
    max_line_length: int  # octets
    max_data_line_length: int  # octets
    idle_timeout: int  # seconds
    max_auth_failures: int
    auth_failure_window: int  # seconds
    max_commands: int
    max_bad_commands: int
    max_connections: int
    max_connections_per_ip: int
    pre_auth_deadline: int  # seconds
    command_deadline: int  # seconds
    data_min_rate: int  # bytes per second
    max_data_per_account: int
    shutdown_grace: int  # seconds


@dataclasses.dataclass(frozen=True)
class Imap(Section):
    host: str
    starttls_port: int
    tls_port: int
    max_line_length: int  # octets
    max_literal: int  # octets
    idle_timeout: int  # seconds
    pre_auth_deadline: int  # seconds
    command_deadline: int  # seconds
    max_commands: int
    max_bad_commands: int
    idle_max: int  # seconds
    idle_poll: float  # seconds
    max_connections: int
    max_connections_per_ip: int
    shutdown_grace: int  # seconds


@dataclasses.dataclass(frozen=True)
class Ses(Section):
    region: str
    endpoint_url: str
    configuration_set: str
    sns_cert_hosts: tuple[str, ...]
    sns_topic_arns: tuple[str, ...]
    max_attempts_per_call: int
    connect_timeout: int  # seconds
    read_timeout: int  # seconds


@dataclasses.dataclass(frozen=True)
class Blobs(Section):
    backend: str
    path: str
    bucket: str
    s3_endpoint_url: str
    orphan_after: int  # seconds
    sweep_interval: int  # seconds


@dataclasses.dataclass(frozen=True)
class Relay(Section):
    max_attempts: int
    backoff_base: int  # seconds
    backoff_max: int  # seconds
    reconcile_after: int  # seconds
    reconcile_interval: int  # seconds
    job_timeout: int  # seconds
    lease: int  # seconds
    concurrency: int  # relay jobs in flight per worker process
    max_inflight_bytes: int  # message bytes in flight per worker process
    max_send_rate: float  # messages/s cluster-wide; 0 = SES GetAccount's MaxSendRate
    send_rate_refresh: int  # seconds


@dataclasses.dataclass(frozen=True)
class Dns(Section):
    resolver: str
    check_interval: int  # seconds
    recheck_interval: int  # seconds
    recheck_grace: int  # seconds
    pending_expiry: int  # seconds
    timeout: float  # seconds
    check_concurrency: int
    check_budget: int  # seconds
    reserved_domains: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Metrics(Section):
    host: str
    smtp_port: int
    worker_port: int
    imap_port: int


@dataclasses.dataclass(frozen=True)
class Webhooks(Section):
    allow_loopback: bool
    retry_schedule: str  # "5s 5m 30m ...": see core.webhooks.retry_delays
    lease: int  # seconds
    dispatch_interval: int  # seconds
    disable_after: int  # seconds
    max_endpoints: int


@dataclasses.dataclass(frozen=True)
class Events(Section):
    retention_days: int
    prune_interval: int  # seconds


@dataclasses.dataclass(frozen=True)
class Audit(Section):
    retention_days: int
    prune_interval: int  # seconds


@dataclasses.dataclass(frozen=True)
class Dev(Section):
    redis_port: int


@dataclasses.dataclass(frozen=True)
class Plan(Section):
    daily_send_limit: int  # recipients per UTC day
    send_rate_per_second: int
    send_burst: int
    max_inboxes: int  # 0 = no limit
    max_domains: int
    new_recipients_per_day: int  # first contacts per inbox per UTC day (an inbox may override it)
    pause_hard_bounces: int  # auto-pause at this many hard bounces in 24 h ...
    pause_bounce_percent: int  # ... that are also at least this % of the inbox's sends in 24 h
    pause_complaints: int  # auto-pause at this many complaints in 24 h


SECTIONS = {"server": Server, "database": Database, "redis": Redis, "web": Web, "smtp": Smtp, "imap": Imap, "ses": Ses,
            "blobs": Blobs, "relay": Relay, "dns": Dns, "metrics": Metrics, "webhooks": Webhooks, "events": Events,
            "audit": Audit, "dev": Dev}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The typed, read-only view of one settings dict."""
    server: Server
    database: Database
    redis: Redis
    web: Web
    smtp: Smtp
    imap: Imap
    ses: Ses
    blobs: Blobs
    relay: Relay
    dns: Dns
    metrics: Metrics
    webhooks: Webhooks
    events: Events
    audit: Audit
    dev: Dev
    plans: Mapping[str, Plan]

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "Settings":
        sections = {name: section.from_dict(config[name]) for name, section in SECTIONS.items()}
        plans = MappingProxyType({name: Plan.from_dict(table) for name, table in config["plans"].items()})
        return cls(**sections, plans=plans)

    def plan(self, name: str | None) -> Plan:
        """The limits of plan ``name``; an unknown or empty plan gets ``server.default_plan``'s."""
        return self.plans.get(name) or self.plans[self.server.default_plan]


def view(config: Mapping[str, Any]) -> Settings:
    """Build the typed view of the settings dict ``config`` (anew on each call: code reads the one
    ``use()`` installed, ``current()``, or the one its app keeps)."""
    return Settings.from_dict(config)


_current = None  # the process's settings dict
_current_view = None  # its typed view, built by use()


def get():
    """The process-wide settings dict, loaded on first use."""
    if _current is None:
        use(load_config())
    return _current


def current() -> Settings:
    """The typed view of the process-wide settings, built once when they were installed (``use()``).
    A dict changed after that is seen after ``use()`` again."""
    if _current_view is None:
        get()
    return _current_view


def typed(config: "Settings | Mapping[str, Any] | None" = None) -> Settings:
    """``config`` as a typed view: a Settings as is, a dict's view, or (None) ``current()``."""
    if config is None:
        return current()
    return config if isinstance(config, Settings) else view(config)


def use(config):
    """Install ``config`` as the process-wide settings and build its typed view once (start-up code;
    tests call it again after changing their dict)."""
    global _current, _current_view
    _current_view = view(config)
    _current = config
    return config


def plan_limits(config, plan):
    plans = config["plans"]
    return plans.get(plan) or plans[config["server"]["default_plan"]]
