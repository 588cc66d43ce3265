"""Custom sending domains: add a claim (sets up the SES identity), show the DNS records, check, delete.

The rules (who may claim a name, caps, which SES identity a delete may remove) live in
``core.domains``; these views render its answers."""
from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from flask_login import current_user
from flask_login import login_required

import models
from webapp.forms import MAX_ID
from core import domains as domain_checks
from core import limits
from webapp.forms import DomainForm
from webapp.views import app_settings
from webapp.views import get_or_404

bp = Blueprint("domains", __name__, url_prefix="/domains")

CHECK_WINDOW = 60  # seconds
MAX_CHECKS_PER_WINDOW = 6  # each check costs DNS lookups and an SES call


def owned_domain(domain_id):
    """The logged-in user's domain or 404 (never 403: other users' ids are not confirmed to exist)."""
    return get_or_404(models.Domain, models.Domain.id == domain_id, models.Domain.user == current_user.user)


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
    try:
        domain = domain_checks.add_domain(current_user.user, form.name.data, app_settings())
    except domain_checks.DomainRefused as exc:
        form.name.errors.append(str(exc))
        return _render_index(form, exc.status)
    flash(f"{domain.name} added. Publish the DNS records below, then press “Check now”.", "success")
    return redirect(url_for("domains.show", domain_id=domain.id))


@bp.get(f"/<int(max={MAX_ID}):domain_id>")
@login_required
def show(domain_id):
    domain = owned_domain(domain_id)
    inboxes = list(models.Inbox.select().where(models.Inbox.domain == domain).order_by(models.Inbox.address))
    return render_template("domains/show.html", domain=domain, records=domain_checks.expected_records(domain),
                           inboxes=inboxes, expires_at=domain_checks.expires_at(domain))


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
    if checked is None:  # dropped meanwhile: another account proved DNS for the name first
        flash(f"{domain.name} was verified by another Inboxlayer account; your claim was removed.", "error")
        return redirect(url_for("domains.index"))
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
    domain_checks.delete_domain(domain)
    flash(f"{domain.name} deleted.", "success")
    return redirect(url_for("domains.index"))
