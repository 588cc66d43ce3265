"""The CLI's split (README "CLI", issue 11): client commands (login, logout, send, status, outbound)
load no server stack, `inboxlayer --help` imports no sub-command, and the lazily listed help is
each command's own. Real `inboxlayer` child processes (the installed console script), which list
the modules they loaded as they exit. Nothing is mocked."""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import cli

ROOT = Path(__file__).resolve().parent.parent
INBOXLAYER = Path(sys.executable).parent / "inboxlayer"  # the console script pyproject installs
SERVER_STACK = {"flask", "werkzeug", "peewee", "playhouse", "redis", "rq", "boto3", "gevent",
                "models", "runtime", "smtpd_worker", "webapp"}
CLIENT_MODULES = ("cli", "cli.output", "cli.client", "cli.login", "cli.send", "cli.outbound", "cli.suppressions",
                  "cli.events", "cli.webhooks", "cli.mcp", "inboxlayer_client", "inboxlayer_client.mcp_server",
                  "core.event_vocabulary",
                  "core.mail")  # core.mail: `send --via smtp` builds the MIME with it


def child_env():
    return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}


# Runs the console script in-process of a child and lists sys.modules at exit. (`-X importtime` would
# miss modules loaded through importlib.import_module, which is how cli/__init__.py loads commands.)
PROBE = """import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write("\\nMODULES " + " ".join(sorted(sys.modules)) + "\\n"))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def imported_by(args):
    """Run ``inboxlayer ARGS`` in a child; return (result, every module name loaded by its exit)."""
    result = subprocess.run([sys.executable, "-c", PROBE, INBOXLAYER, *args], cwd=ROOT, env=child_env(),
                            capture_output=True, text=True, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.startswith("MODULES ")]
    assert len(lines) == 1, result.stderr[-2000:]
    return result, set(lines[0].split()[1:])


def top_level(modules):
    return {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("args", [["--help"], ["send", "--help"], ["status", "--help"], ["outbound", "--help"],
                                  ["outbound", "list", "--help"], ["login", "--help"], ["logout", "--help"],
                                  ["suppressions", "--help"], ["suppressions", "add", "--help"],
                                  ["events", "tail", "--help"], ["webhooks", "list", "--help"], ["mcp", "--help"]],
                         ids=" ".join)
def test_cli_client_command_loads_no_server_stack(args):
    result, modules = imported_by(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage: inboxlayer" in result.stdout
    assert sorted(top_level(modules) & SERVER_STACK) == []
    assert "cli.common" not in modules


def test_cli_admin_command_loads_the_database_stack():
    """The control for the test above: the same probe does see the stack when a command needs it."""
    result, modules = imported_by(["db", "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"peewee", "models", "runtime"} <= top_level(modules)
    assert "cli.common" in modules


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_cli_client_module_imports_no_server_stack(module):
    script = f"import importlib, sys; importlib.import_module({module!r}); print('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=child_env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(top_level(result.stdout.split()) & SERVER_STACK) == []


def test_cli_root_help_imports_no_command_module():
    result, modules = imported_by(["--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(name for name in modules if name.startswith("cli.")) == ["cli.output"]
    listed = [line.split()[1] for line in result.stdout.splitlines()
              if line.startswith("│ ") and line.split()[1] in cli.COMMANDS]
    assert listed == list(cli.COMMANDS)


def test_cli_send_help_loads_only_its_own_modules():
    result, modules = imported_by(["send", "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(name for name in modules if name.startswith("cli.")) == [
        "cli.client", "cli.outbound", "cli.output", "cli.send"]


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_cli_lazy_listing_matches_the_command_help(name):
    """`inboxlayer --help` shows COMMANDS' line; the command, once imported, says the same."""
    target, listed = cli.COMMANDS[name]
    real = cli.build_command(name, target)
    assert inspect.cleandoc(real.short_help or real.help).split("\n\n")[0].strip() == listed
    assert real.name == name


def test_cli_lazy_command_builds_the_real_command_on_first_use():
    stub = typer.main.get_command(cli.app).get_command(None, "db")
    assert isinstance(stub, cli.LazyCommand)
    assert "command" not in vars(stub)  # listed, not yet built
    assert (stub.command.name, sorted(stub.command.commands)) == ("db", ["init", "status"])


@pytest.mark.parametrize("args, reason", [
    (["send", "--to", "bob@example.com"], "Error: Missing option '--from'."),
    (["sned"], "Error: No such command 'sned'. Did you mean 'send'?"),
    (["outbound", "lst"], "Error: No such command 'lst'. Did you mean 'list'?"),
    (["login", "--smtp-port", "abc", "--token", "x"],
     "Error: Invalid value for '--smtp-port': Input should be a valid integer, unable to parse string as an "
     "integer"),
])
def test_cli_usage_error_exits_2_with_usage_and_reason(args, reason):
    result = subprocess.run([INBOXLAYER, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0].startswith("Usage: inboxlayer ")
    assert lines[-1] == reason
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, usage", [([], "Usage: inboxlayer [OPTIONS] COMMAND [ARGS]..."),
                                         (["db"], "Usage: inboxlayer db [OPTIONS] COMMAND [ARGS]...")])
def test_cli_bare_group_prints_its_help_and_exits_2(args, usage):
    result = subprocess.run([INBOXLAYER, *args], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=60)
    assert (result.returncode, result.stderr) == (2, "")
    assert result.stdout.lstrip().startswith(usage)
