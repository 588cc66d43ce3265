"""What the dashboard's views share: this app's settings, the signed-in user's row or 404, paging
and the template filters.

One home for helpers the blueprints used to write each for themselves.
"""
import json

from flask import abort
from flask import current_app
from flask import request

import settings
from core import outbound
from core.text import BIDI_CONTROLS

SETTINGS_EXTENSION = "inboxlayer.settings"  # app.extensions key of the app's typed settings
MAX_PAGE = 10**6  # a larger ?page= is read as this one (an empty page, not an error)


def app_config():
    """This app's settings dict (``create_app``'s ``config``), for helpers that take the dict."""
    return current_app.config["INBOXLAYER"]


def app_settings() -> settings.Settings:
    """The typed view of this app's settings, built once by ``create_app``."""
    return current_app.extensions[SETTINGS_EXTENSION]


def get_or_404(model, *conditions):
    """The ``model`` row matching ``conditions`` or 404. Views put the signed-in user in the
    conditions, so another account's row is "not found", never "forbidden": ids are not confirmed."""
    row = model.get_or_none(*conditions)
    if row is None:
        abort(404)
    return row


def page_number():
    """The 1-based ``?page=``; junk reads as 1."""
    try:
        return max(1, min(int(request.args.get("page", "1")), MAX_PAGE))
    except ValueError:
        return 1


def paginate(query, page_size):
    """(rows of the requested page, page, pages, total): ``pages`` is at least 1."""
    page = page_number()
    total = query.count()
    return list(query.paginate(page, page_size)), page, max(1, -(-total // page_size)), total


# -- template filters (app-wide: the factory installs TEMPLATE_FILTERS) ---------------------------

def fromjson(value):
    """Decode a JSON column (e.g. OutboundEmail.recipients) for display; junk shows as-is."""
    try:
        decoded = json.loads(value or "[]")
    except ValueError:
        return [value]
    return decoded if isinstance(decoded, list) else [decoded]


def bidi_visible(text):
    """``text`` with every bidi control shown as ``[U+202E]`` and so on: an attachment named
    "invoice<U+202E>fdp.exe" must not display as "invoiceexe.pdf"."""
    return "".join(f"[U+{ord(c):04X}]" if c in BIDI_CONTROLS else c for c in text or "")


TEMPLATE_FILTERS = {"fromjson": fromjson, "bidi_visible": bidi_visible}
# Template globals (the factory installs them): core.outbound's status groups, so templates do not
# spell them out again.
TEMPLATE_GLOBALS = {"OUTBOUND_ACTIVE": outbound.ACTIVE, "OUTBOUND_FINAL": outbound.FINAL,
                    "OUTBOUND_UNDELIVERED": outbound.UNDELIVERED}
