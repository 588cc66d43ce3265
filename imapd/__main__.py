"""`python -m imapd`: the IMAP server process (`inboxlayer imapd` execs this).

gevent must patch the standard library before anything imports ssl or socket, so this entry
point does it first, in a fresh interpreter.
"""
from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import settings  # noqa: E402
from imapd import server  # noqa: E402


def run():
    try:
        config = settings.get()
    except settings.SettingsError as exc:
        sys.stderr.write(f"error: configuration error: {exc}\n")
        sys.exit(2)
    server.main(config)


if __name__ == "__main__":
    run()
