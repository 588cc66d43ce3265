"""The Suppressions page: the account's suppressed recipients, added by SES events or by hand
(core/recipients.py owns the rules; the REST API and the CLI reach the same functions)."""
from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_required

import models
from core import recipients

bp = Blueprint("suppressions", __name__, url_prefix="/suppressions")

MAX_FORM_CHARS = 400_000  # characters of the addresses box (1000 addresses of up to 320 characters, and more)
SHOWN = 500  # newest entries listed on the page


def _render(error=None, addresses="", reason="", status=200):
    rows = (recipients.list_suppressions(current_user.user)
            .order_by(models.Suppression.created_at.desc(), models.Suppression.id.desc()).limit(SHOWN))
    total = recipients.list_suppressions(current_user.user).count()
    return render_template("suppressions/index.html", rows=list(rows), total=total, shown=SHOWN, error=error,
                           addresses=addresses, reason=reason, max_batch=recipients.MAX_BATCH), status


@bp.get("/")
@login_required
def index():
    return _render()


@bp.post("/")
@login_required
def add():
    text = request.form.get("addresses", "")[:MAX_FORM_CHARS + 1]
    reason = request.form.get("reason", "").strip() or None
    addresses = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
    if len(text) > MAX_FORM_CHARS or not addresses:
        return _render("Enter one address per line." if not addresses else "Too much text.", text[:2000],
                       reason or "", 422)
    try:
        rows = recipients.add_suppressions(current_user.user, addresses, reason)
    except recipients.InvalidEntry as exc:
        _, _, index = exc.field.partition("[")
        where = f"Line {int(index.rstrip(']')) + 1}" if index else exc.field.capitalize()
        return _render(f"{where}: {exc}. Nothing was added.", text, reason or "", 422)
    flash(f"{len(rows)} address{'es' if len(rows) != 1 else ''} suppressed.", "success")
    return redirect(url_for("suppressions.index"))


@bp.post("/remove")
@login_required
def remove():
    address = request.form.get("address", "")[:400]
    if recipients.remove_suppression(current_user.user, address):
        flash(f"{address} removed: sending to it is allowed again.", "success")
    else:
        flash(f"{address} is not on the suppression list.", "error")
    return redirect(url_for("suppressions.index"))
