"""Account settings > API keys: create (the full token shown once) with a scope, list, revoke,
and one page per key with its audit trail."""
from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from flask_login import current_user
from flask_login import login_required

import models
from core import accounts
from core import audit
from core import keys
from webapp.forms import MAX_ID
from webapp.forms import TokenForm
from webapp.views import get_or_404

bp = Blueprint("api_keys", __name__, url_prefix="/account/keys")
AUDIT_ROWS = 100  # rows on a key's page, newest first


def _tokens(user):
    return (models.ApiToken.select().where(models.ApiToken.user == user)
            .order_by(models.ApiToken.revoked_at.is_null(False), models.ApiToken.created_at.desc()))


def _form(formdata=None):
    form = TokenForm() if formdata is None else TokenForm(formdata=formdata)
    form.inboxes.choices = [(i.address, i.address) for i in models.Inbox.select(models.Inbox.address)
                            .where(models.Inbox.user == current_user.user).order_by(models.Inbox.address)]
    return form


def _render(form, new_token=None, status=200):
    tokens = [(t, keys.describe(t)) for t in _tokens(current_user.user)]
    response = render_template("api_keys/index.html", form=form, tokens=tokens, new_token=new_token,
                               now=models.utcnow())
    # The page that shows a full token must not be kept by caches or the back button.
    headers = {"Cache-Control": "no-store"} if new_token else {}
    return response, status, headers


@bp.get("/")
@login_required
def index():
    return _render(_form())


@bp.post("/")
@login_required
def create():
    form = _form()
    if not form.validate_on_submit():
        return _render(form, status=422)
    user = current_user.user
    try:
        expires_at = models.utcnow() + keys.parse_duration(form.expires_in.data) if form.expires_in.data else None
        scope = keys.build_scope(user, inboxes=form.inboxes.data or None, permissions=form.permissions.data or None,
                                 expires_at=expires_at, daily_limit=form.daily_limit.data, sandbox=form.sandbox.data)
    except keys.KeyInputError as exc:
        getattr(form, exc.field if exc.field != "expires_at" else "expires_in").errors.append(exc.message)
        return _render(form, status=422)
    row, token = accounts.create_token(user, form.name.data, scope)
    # Rendered directly, never flashed: the session cookie is signed, not encrypted.
    return _render(_form(formdata=None), new_token={"row": row, "token": token}, status=201)


@bp.get(f"/<int(max={MAX_ID}):token_id>")
@login_required
def show(token_id):
    token = get_or_404(models.ApiToken, models.ApiToken.id == token_id, models.ApiToken.user == current_user.user)
    audit.flush()
    events = list(models.AuditEvent.select().where(models.AuditEvent.user == current_user.user,
                                                   models.AuditEvent.token == token.id)
                  .order_by(models.AuditEvent.id.desc()).limit(AUDIT_ROWS))
    return render_template("api_keys/show.html", token=token, scope=keys.describe(token), events=events,
                           now=models.utcnow(), usage=keys.key_sends_today(token.id))


@bp.post(f"/<int(max={MAX_ID}):token_id>/revoke")
@login_required
def revoke(token_id):
    token = get_or_404(models.ApiToken, models.ApiToken.id == token_id, models.ApiToken.user == current_user.user)
    revoked = accounts.revoke_token(current_user.user, token.id)
    if revoked:
        flash(f"Key “{token.name}” ({token.prefix}…) is revoked. SMTP and API requests using it now fail.", "success")
    else:
        flash(f"Key “{token.name}” was already revoked.", "info")
    return redirect(url_for("api_keys.index"))
