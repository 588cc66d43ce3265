"""Inboxes: create on the default domain or a custom one, list, show SMTP settings, delete."""
from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_login import current_user
from flask_login import login_required
from peewee import JOIN

import models
from webapp.forms import MAX_ID
from core import accounts
from core import quota
from core import recipients
from webapp.forms import InboxForm
from webapp.views import app_settings
from webapp.views import get_or_404

bp = Blueprint("inboxes", __name__, url_prefix="/inboxes")

DEFAULT_DOMAIN_CHOICE = 0  # the select's value for the default domain (domain ids start at 1)


def owned_inbox(inbox_id):
    """The logged-in user's inbox or 404."""
    return get_or_404(models.Inbox, models.Inbox.id == inbox_id, models.Inbox.user == current_user.user)


def _max_inboxes():
    return app_settings().plan(current_user.user.plan).max_inboxes


def _form():
    form = InboxForm()
    domains = models.Domain.select().where(models.Domain.user == current_user.user).order_by(models.Domain.name)
    form.domain.choices = [(DEFAULT_DOMAIN_CHOICE, app_settings().server.default_domain)] + [
        (d.id, d.name if d.status == "verified" else f"{d.name} ({d.status}: cannot send until verified)")
        for d in domains]
    return form


def _render_index(form, status=200):
    inboxes = (models.Inbox.select(models.Inbox, models.Domain)
               .join(models.Domain, join_type=JOIN.LEFT_OUTER, on=(models.Inbox.domain == models.Domain.id))
               .where(models.Inbox.user == current_user.user).order_by(models.Inbox.address))
    return render_template("inboxes/index.html", form=form, inboxes=list(inboxes),
                           default_domain=app_settings().server.default_domain), status


@bp.get("/")
@login_required
def index():
    return _render_index(_form())


@bp.post("/")
@login_required
def create():
    form = _form()
    if not form.validate_on_submit():
        return _render_index(form, 422)
    domain = None
    if form.domain.data != DEFAULT_DOMAIN_CHOICE:
        domain = models.Domain.get_or_none(models.Domain.id == form.domain.data,
                                           models.Domain.user == current_user.user)
        if domain is None:  # the choices are the user's own domains; this is a tampered form
            form.domain.errors.append("Choose one of your domains.")
            return _render_index(form, 422)
    try:
        inbox = accounts.create_inbox(current_user.user, form.local_part.data, domain,
                                      app_settings().server.default_domain, form.display_name.data,
                                      max_inboxes=_max_inboxes())
    except accounts.InboxLimitReached as exc:
        form.form_errors.append(str(exc).capitalize() + ".")
        return _render_index(form, 403)
    except models.AddressError as exc:
        form.local_part.errors.append(str(exc).capitalize() + ".")
        return _render_index(form, 422)
    except accounts.InboxExists:
        form.local_part.errors.append("That address is already taken. Choose another name.")
        return _render_index(form, 422)
    flash(f"Inbox {inbox.address} created.", "success")
    return redirect(url_for("dashboard.inboxes.show", inbox_id=inbox.id))


MAX_POLICY_CHARS = 400_000  # characters of one policy box (1000 entries of up to 320 characters, and more)


@bp.get(f"/<int(max={MAX_ID}):inbox_id>")
@login_required
def show(inbox_id):
    return _render_show(owned_inbox(inbox_id))


def _policy_view(inbox, form=None, error=None):
    policy = recipients.policy_of(inbox)
    return {"allow": form["allow"] if form else "\n".join(policy["allow"]),
            "block": form["block"] if form else "\n".join(policy["block"]),
            "cap": form["cap"] if form else ("" if inbox.new_recipients_per_day is None
                                             else str(inbox.new_recipients_per_day)),
            "effective_cap": recipients.cap_of(current_user.user, inbox),
            "new_today": recipients.new_today(inbox), "error": error}


def _render_show(inbox, policy_form=None, policy_error=None, status=200):
    can_send, reason = models.inbox_can_send(inbox)
    smtp = app_settings().smtp
    recent = (models.OutboundEmail.select().where(models.OutboundEmail.inbox == inbox)
              .order_by(models.OutboundEmail.created_at.desc(), models.OutboundEmail.id.desc()).limit(5))
    sent_count = models.Message.select().where(models.Message.inbox == inbox, models.Message.folder == "sent").count()
    return render_template("inboxes/show.html", inbox=inbox, can_send=can_send, reason=reason,
                           smtp_host=smtp.public_host, starttls_port=smtp.starttls_port,
                           tls_port=smtp.tls_port, max_size_mb=smtp.max_message_size // 2**20,
                           imap=app_settings().imap,
                           recent=list(recent), sent_count=sent_count, usage=quota.usage(current_user.user),
                           policy=_policy_view(inbox, policy_form, policy_error)), status


@bp.post(f"/<int(max={MAX_ID}):inbox_id>/policy")
@login_required
def update_policy(inbox_id):
    inbox = owned_inbox(inbox_id)
    form = {name: request.form.get(name, "")[:MAX_POLICY_CHARS + 1] for name in ("allow", "block", "cap")}
    if any(len(value) > MAX_POLICY_CHARS for value in form.values()):
        return _render_show(inbox, form, "Too much text: at most 1000 entries per list.", 422)
    lists = {name: [line.strip() for line in form[name].replace(",", "\n").splitlines() if line.strip()]
             for name in ("allow", "block")}
    cap = form["cap"].strip()
    if cap and not (cap.isascii() and cap.isdigit() and len(cap) <= 7):
        return _render_show(inbox, form, "New recipients per day: a whole number, or empty for the plan's.", 422)
    try:
        recipients.set_policy(inbox, lists["allow"], lists["block"], int(cap) if cap else None)
    except recipients.InvalidEntry as exc:
        kind, _, index = exc.field.partition("[")
        where = f"{kind.capitalize()}list line {int(index.rstrip(']')) + 1}" if index else exc.field
        return _render_show(inbox, form, f"{where}: {exc}. Nothing was saved.", 422)
    flash("Recipient policy saved.", "success")
    return redirect(url_for("dashboard.inboxes.show", inbox_id=inbox.id))


@bp.post(f"/<int(max={MAX_ID}):inbox_id>/resume")
@login_required
def resume(inbox_id):
    inbox = owned_inbox(inbox_id)
    if recipients.resume(inbox):
        flash(f"{inbox.address} resumed: it sends again.", "success")
    return redirect(url_for("dashboard.inboxes.show", inbox_id=inbox.id))


@bp.post(f"/<int(max={MAX_ID}):inbox_id>/delete")
@login_required
def delete(inbox_id):
    inbox = owned_inbox(inbox_id)
    try:
        accounts.delete_inbox(inbox)
    except accounts.InboxBusy as exc:
        in_flight = exc.in_flight
        flash(f"{in_flight} message{'s' if in_flight != 1 else ''} from {inbox.address} "
              f"{'are' if in_flight != 1 else 'is'} still being sent. Try again once "
              f"{'they are' if in_flight != 1 else 'it is'} sent.", "error")
        return redirect(url_for("dashboard.inboxes.show", inbox_id=inbox.id))
    flash(f"Inbox {inbox.address} deleted, with its Sent folder and outbound history.", "success")
    return redirect(url_for("dashboard.inboxes.index"))
