"""Account settings > API keys: create (the full token shown once), list, revoke."""
from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from flask_login import current_user
from flask_login import login_required

import models
from core import accounts
from webapp.forms import MAX_ID
from webapp.forms import TokenForm
from webapp.views import get_or_404

bp = Blueprint("api_keys", __name__, url_prefix="/account/keys")


def _tokens(user):
    return (models.ApiToken.select().where(models.ApiToken.user == user)
            .order_by(models.ApiToken.revoked_at.is_null(False), models.ApiToken.created_at.desc()))


def _render(form, new_token=None, status=200):
    response = render_template("api_keys/index.html", form=form, tokens=list(_tokens(current_user.user)),
                               new_token=new_token)
    # The page that shows a full token must not be kept by caches or the back button.
    headers = {"Cache-Control": "no-store"} if new_token else {}
    return response, status, headers


@bp.get("/")
@login_required
def index():
    return _render(TokenForm())


@bp.post("/")
@login_required
def create():
    form = TokenForm()
    if not form.validate_on_submit():
        return _render(form, status=422)
    row, token = accounts.create_token(current_user.user, form.name.data)
    # Rendered directly, never flashed: the session cookie is signed, not encrypted.
    return _render(TokenForm(formdata=None), new_token={"row": row, "token": token}, status=201)


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
