"""Account settings > Webhooks: endpoints (the secret shown once), their delivery log, replay,
"send test event", enable/disable, rotate, delete. Each action is one core.webhooks call."""
import datetime

from flask import Blueprint
from flask import abort
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_required

import models
from core import ids
from core import webhooks
from webapp.forms import WebhookForm
from webapp.views import app_settings

bp = Blueprint("endpoints", __name__, url_prefix="/account/webhooks")


def _inboxes():
    return list(models.Inbox.select().where(models.Inbox.user == current_user.user).order_by(models.Inbox.address))


def _form(formdata=...):
    form = WebhookForm() if formdata is ... else WebhookForm(formdata=formdata)
    form.inbox.choices = [(0, "All inboxes")] + [(i.id, i.address) for i in _inboxes()]
    return form


def _render(form, new_secret=None, status=200):
    w = models.WebhookEndpoint
    endpoints = list(w.select().where(w.user == current_user.user).order_by(w.id))
    inboxes = {i.id: i.address for i in _inboxes()}
    response = render_template("webhooks/index.html", form=form, endpoints=endpoints, inboxes=inboxes,
                               new_secret=new_secret, event_types=webhooks.event_types)
    return response, status, {"Cache-Control": "no-store"} if new_secret else {}


def _endpoint(public_id):
    endpoint = webhooks.owned_endpoint(current_user.user, public_id)
    if endpoint is None:
        abort(404)
    return endpoint


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
    inbox = None
    if form.inbox.data:
        inbox = models.Inbox.get_or_none(models.Inbox.id == form.inbox.data, models.Inbox.user == current_user.user)
    try:
        endpoint, secret = webhooks.create_endpoint(current_user.user, form.url.data, form.events.data, inbox,
                                                    config=app_settings())
    except webhooks.WebhookError as exc:
        getattr(form, exc.field, form.url).errors = [str(exc)]
        return _render(form, status=422)
    # Rendered directly, never flashed: the session cookie is signed, not encrypted.
    return _render(_form(formdata=None), new_secret={"endpoint": endpoint, "secret": secret}, status=201)


@bp.get("/<any_id>")
@login_required
def show(any_id):
    endpoint = _endpoint(any_id)
    rows, has_more = webhooks.deliveries(endpoint, limit=50)
    return render_template("webhooks/show.html", endpoint=endpoint, deliveries=rows, has_more=has_more,
                           event_types=webhooks.event_types(endpoint))


@bp.post("/<any_id>/rotate")
@login_required
def rotate(any_id):
    endpoint = _endpoint(any_id)
    secret = webhooks.rotate_secret(endpoint)
    return _render(_form(formdata=None), new_secret={"endpoint": endpoint, "secret": secret}, status=200)


@bp.post("/<any_id>/enabled")
@login_required
def set_enabled(any_id):
    endpoint = _endpoint(any_id)
    enabled = request.form.get("enabled") == "1"
    webhooks.update_endpoint(endpoint, enabled=enabled, config=app_settings())
    flash(f"Endpoint {endpoint.public_id} is {'enabled' if enabled else 'disabled'}.", "success")
    return redirect(url_for("endpoints.index"))


@bp.post("/<any_id>/delete")
@login_required
def delete(any_id):
    endpoint = _endpoint(any_id)
    webhooks.delete_endpoint(endpoint)
    flash(f"Endpoint {endpoint.url} is deleted.", "success")
    return redirect(url_for("endpoints.index"))


@bp.post("/<any_id>/test")
@login_required
def send_test(any_id):
    endpoint = _endpoint(any_id)
    if not endpoint.enabled:
        flash("Enable the endpoint before sending it a test event.", "error")
    else:
        flash(f"Test event {webhooks.send_test_event(endpoint)} is on its way.", "success")
    return redirect(url_for("endpoints.show", any_id=endpoint.public_id))


@bp.post("/<any_id>/replay")
@login_required
def replay(any_id):
    endpoint = _endpoint(any_id)
    event_id = (request.form.get("event") or "").strip()
    hours = (request.form.get("hours") or "").strip()
    if event_id:
        count = webhooks.replay_event(endpoint, event_id) if ids.is_event_id(event_id) else 0
        if not count:
            flash(f"No event {event_id[:40]!r} in this account.", "error")
            return redirect(url_for("endpoints.show", any_id=endpoint.public_id))
    elif hours.isdigit() and 0 < int(hours) <= 24 * 90:
        count = webhooks.replay_since(endpoint, models.utcnow() - datetime.timedelta(hours=int(hours)))
    else:
        flash("Give an event id, or a number of hours (1 to 2160).", "error")
        return redirect(url_for("endpoints.show", any_id=endpoint.public_id))
    flash(f"Replaying {count} event(s).", "success")
    return redirect(url_for("endpoints.show", any_id=endpoint.public_id))
