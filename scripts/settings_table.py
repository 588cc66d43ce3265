"""Print the settings table for README.md from config.toml (its defaults and comments).

    .venv/bin/python scripts/settings_table.py > /tmp/table.md
"""
import re
import sys
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "config.toml"
ENTRY = re.compile(r"^(\w+) = (.+?)(?:\s+# (.*))?$")


def rows(text):
    section = None
    for line in text.splitlines():
        header = re.match(r"^\[(.+)\]$", line)
        if header:
            section = header.group(1)
            continue
        entry = ENTRY.match(line)
        if entry and section:
            key, default, comment = entry.groups()
            env = f"INBOXLAYER_{section.replace('.', '_').upper()}_{key.upper()}"
            comment = (comment or "").replace("|", "\\|")
            yield f"| `{section}.{key}` | `{default.strip()}` | `{env}` | {comment} |"


def table():
    return "\n".join(["| setting | default | environment | meaning |", "|---|---|---|---|", *rows(CONFIG.read_text())])


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
