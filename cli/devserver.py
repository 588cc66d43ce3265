"""`inboxlayer dev`: the whole system on one machine, on the embedded defaults.

Starts the SES stand-in (moto server), finds or starts Redis, applies the schema, then runs
`inboxlayer web`, `smtpd` and `worker` as child processes and stops them all on Ctrl-C/SIGTERM.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from cli.common import console
from cli.common import fail


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
    """REDIS_URL if set; else a server already on 127.0.0.1:6379; else a private redis-server."""
    if os.environ.get("REDIS_URL") or os.environ.get("INBOXLAYER_REDIS_URL"):
        return config["redis"]["url"], "REDIS_URL"
    if port_open("127.0.0.1", 6379):
        return "redis://127.0.0.1:6379/0", "the local Redis on 127.0.0.1:6379"
    binary = shutil.which("redis-server")
    if binary is None:
        fail("no Redis: set REDIS_URL, start one on 127.0.0.1:6379, or install redis-server "
             "(apt-get install redis-server)")
    port = free_port()
    children.start("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(data_dir)], env, stdout=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, "redis-server")
    return f"redis://127.0.0.1:{port}/0", f"a private redis-server on port {port}"


def start_ses_standin(children, env):
    moto = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not os.path.exists(moto):
        fail("moto_server not found: `make run` installs it (pip install 'moto[server]')")
    port = free_port()
    proc = children.start("ses", [moto, "-H", "127.0.0.1", "-p", str(port)], env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port("127.0.0.1", port, "moto_server", proc)
    return f"http://127.0.0.1:{port}"


def run(config):
    data_dir = Path(config["server"]["data_dir"]).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "dev")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "dev")
    env.setdefault("AWS_DEFAULT_REGION", config["ses"]["region"])
    env.setdefault("INBOXLAYER_WEB_SECRET_KEY", _dev_secret(data_dir))
    children = Children()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
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
        web = children.start("web", inboxlayer + ["web", "--workers", "1"], env)
        wait_for_port(config["web"]["host"], config["web"]["port"], "web", web)
        if config["smtp"]["starttls_port"]:
            wait_for_port(config["smtp"]["host"], config["smtp"]["starttls_port"], "smtpd", smtp)
        _banner(config, redis_source, ses_note)
        while all(proc.poll() is None for _, proc in children.procs):
            time.sleep(0.5)
        dead = [name for name, proc in children.procs if proc.poll() is not None]
        console.print(f"[red]{', '.join(dead)} exited; stopping everything[/]")
    except KeyboardInterrupt:
        console.print("\nstopping…")
    finally:
        children.stop()


def _dev_secret(data_dir):
    path = data_dir / "dev-secret-key"
    if not path.exists():
        path.write_text(os.urandom(32).hex())
        path.chmod(0o600)
    return path.read_text().strip()


def _prepare_ses(env, config):
    """Verify the default domain's identity at the stand-in, as an operator does once in SES."""
    import boto3

    client = boto3.client("sesv2", endpoint_url=env["INBOXLAYER_SES_ENDPOINT_URL"],
                          region_name=config["ses"]["region"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    client.create_email_identity(EmailIdentity=config["server"]["default_domain"])


def _banner(config, redis_source, ses_note):
    web = config["web"]["public_url"]
    smtp = config["smtp"]
    console.print(f"""
[bold green]Inboxlayer is running.[/]
  Dashboard   {web}   (sign up, create an inbox and an API key)
  SMTP        {smtp['host']}:{smtp['starttls_port']} (STARTTLS), {smtp['host']}:{smtp['tls_port']} (TLS); self-signed cert in {config['server']['data_dir']}/tls
  Redis       {redis_source}
  SES         {ses_note}
  Data        {config['database']['url']}

Send a first message from the command line:
  .venv/bin/inboxlayer users create you@example.com --password-stdin <<< 'a-long-password'
  .venv/bin/inboxlayer inboxes create agent@{config['server']['default_domain']} --owner you@example.com
  TOKEN=$(.venv/bin/inboxlayer tokens create you@example.com --name first --quiet)
  swaks --server {smtp['host']}:{smtp['starttls_port']} -tls \\
        --auth PLAIN --auth-user agent@{config['server']['default_domain']} --auth-password "$TOKEN" \\
        --from agent@{config['server']['default_domain']} --to someone@example.com
  .venv/bin/inboxlayer outbound list --api-url {web} --token "$TOKEN"

Ctrl-C stops everything.
""", highlight=False, soft_wrap=True)
