"""WSGI entry point for gunicorn (`inboxlayer web`): the only module that builds the app at import."""
from gevent import monkey

if monkey.is_module_patched("socket"):
    # gunicorn's gevent worker patched the stdlib; make psycopg2 yield to other greenlets too.
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()

import runtime  # noqa: E402
from webapp import create_app  # noqa: E402

runtime.setup_logging(runtime.settings.get())
try:
    app = create_app()
except runtime.settings.SettingsError as exc:
    # gunicorn prints an AppImportError as one line and stops, instead of respawning workers that
    # fail the same way (e.g. no INBOXLAYER_WEB_SECRET_KEY in production).
    from gunicorn.errors import AppImportError

    raise AppImportError(f"configuration error: {exc}") from None
