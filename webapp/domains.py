"""Custom sending domains: add (creates the SES identity), show the DNS records, check, delete."""
import json

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from flask_login import current_user
from flask_login import login_required
from peewee import IntegrityError

import models
from webapp.forms import MAX_ID
from smtpd_worker import domain_checks
from smtpd_worker import limits
from webapp.forms import DomainForm

bp = Blueprint("domains", __name__, url_prefix="/domains")

CHECK_WINDOW = 60  # seconds
MAX_CHECKS_PER_WINDOW = 6  # each check costs DNS lookups and an SES call


def owned_domain(domain_id):
    """The logged-in user's domain or 404 (never 403: other users' ids are not confirmed to exist)."""
    domain = models.Domain.get_or_none(models.Domain.id == domain_id, models.Domain.user == current_user.user)
    if domain is None:
        abort(404)
    return domain


def _render_index(form, status=200):
    domains = (models.Domain.select().where(models.Domain.user == current_user.user)
               .order_by(models.Domain.name))
    return render_template("domains/index.html", form=form, domains=list(domains)), status


@bp.get("/")
@login_required
def index():
    return _render_index(DomainForm())


@bp.post("/")
@login_required
def create():
    form = DomainForm()
    if not form.validate_on_submit():
        return _render_index(form, 422)
    name = form.name.data
    default_domain = current_app.config["INBOXLAYER"]["server"]["default_domain"]
    if name == default_domain or name.endswith("." + default_domain):
        form.name.errors.append(f"{default_domain} is ours; inboxes on it need no domain setup.")
        return _render_index(form, 422)
    if models.Domain.select().where(models.Domain.name == name).exists():
        # A friendly early answer; the unique index below is what actually guarantees it.
        form.name.errors.append("This domain is already registered with Inboxlayer.")
        return _render_index(form, 422)
    try:
        tokens = domain_checks.create_identity(name)
    except domain_checks.DomainSetupError as exc:
        form.name.errors.append(str(exc))
        return _render_index(form, 503)
    try:
        with models.db.atomic():
            domain = models.Domain.create(user=current_user.user, name=name, status="pending",
                                          verification_token=domain_checks.new_verification_token(),
                                          dkim_tokens=json.dumps(tokens))
    except IntegrityError:
        form.name.errors.append("This domain is already registered with Inboxlayer.")
        return _render_index(form, 422)
    flash(f"{name} added. Publish the DNS records below, then press “Check now”.", "success")
    return redirect(url_for("domains.show", domain_id=domain.id))


@bp.get(f"/<int(max={MAX_ID}):domain_id>")
@login_required
def show(domain_id):
    domain = owned_domain(domain_id)
    inboxes = list(models.Inbox.select().where(models.Inbox.domain == domain).order_by(models.Inbox.address))
    return render_template("domains/show.html", domain=domain, records=domain_checks.expected_records(domain),
                           inboxes=inboxes)


@bp.post(f"/<int(max={MAX_ID}):domain_id>/check")
@login_required
def check(domain_id):
    domain = owned_domain(domain_id)
    try:
        recent_checks = limits.count_in_window("domain-check", domain.id, CHECK_WINDOW)
    except limits.LimiterUnavailable:
        recent_checks = 0  # checking is harmless; only its cost is limited
    if recent_checks > MAX_CHECKS_PER_WINDOW:
        flash("This domain was just checked several times; please wait a minute before checking again.", "info")
        return redirect(url_for("domains.show", domain_id=domain.id))
    checked = domain_checks.check_domain(domain.id)
    if checked.status == "verified":
        flash(f"{checked.name} is verified. Inboxes on it can send.", "success")
    elif checked.status == "failed":
        flash(f"{checked.name} failed verification. Fix the record named below and check again.", "error")
    else:
        flash(f"{checked.name} is still pending. DNS changes can take a while to show up.", "info")
    return redirect(url_for("domains.show", domain_id=domain.id))


@bp.post(f"/<int(max={MAX_ID}):domain_id>/delete")
@login_required
def delete(domain_id):
    domain = owned_domain(domain_id)
    if models.Inbox.select().where(models.Inbox.domain == domain).exists():
        flash(f"Delete the inboxes on {domain.name} first; deleting the domain would delete their Sent mail.",
              "error")
        return redirect(url_for("domains.show", domain_id=domain.id))
    with models.db.atomic():
        domain.delete_instance()
    domain_checks.delete_identity(domain.name)
    flash(f"{domain.name} deleted.", "success")
    return redirect(url_for("domains.index"))
