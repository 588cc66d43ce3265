"""The signed-in home page (usage, getting started) and the parent of the inbox, Sent and
Outbound pages, which live in their own modules as nested blueprints."""
from flask import Blueprint
from flask import redirect
from flask import render_template
from flask import url_for
from flask_login import current_user
from flask_login import login_required

import models
from core import quota
from webapp import inboxes
from webapp import outbound
from webapp import sent

bp = Blueprint("dashboard", __name__)
bp.register_blueprint(inboxes.bp)
bp.register_blueprint(sent.bp)
bp.register_blueprint(outbound.bp)


@bp.get("/")
def home():
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.index"))
    return redirect(url_for("auth.login"))


@bp.get("/dashboard")
@login_required
def index():
    user = current_user.user
    recent = (models.OutboundEmail.select(models.OutboundEmail, models.Inbox).join(models.Inbox)
              .where(models.OutboundEmail.user == user)
              .order_by(models.OutboundEmail.created_at.desc(), models.OutboundEmail.id.desc()).limit(8))
    counts = {
        "tokens": models.ApiToken.select().where(models.ApiToken.user == user,
                                               models.ApiToken.revoked_at.is_null()).count(),
        "inboxes": models.Inbox.select().where(models.Inbox.user == user).count(),
        "domains": models.Domain.select().where(models.Domain.user == user).count(),
    }
    return render_template("dashboard.html", usage=quota.usage(user), recent=list(recent), counts=counts)
