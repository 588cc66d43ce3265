"""Sign up, log in, log out, change password."""
import functools
import hashlib
import logging
import secrets
from urllib.parse import urlsplit

from flask import Blueprint
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask_login import UserMixin
from flask_login import current_user
from flask_login import login_required
from flask_login import login_user
from flask_login import logout_user
import redis
from werkzeug.security import check_password_hash
from werkzeug.security import generate_password_hash

import models
from core import accounts
from core import limits
from core import outbox
from webapp.forms import ChangePasswordForm
from webapp.forms import LoginForm
from webapp.forms import SignupForm
from webapp.views import app_settings

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)

LOGIN_WINDOW = 15 * 60  # seconds over which failed logins are counted
PASSWORD_FINGERPRINT_KEY = "_pwfp"
SESSION_EPOCH_KEY = "_epoch"


class LoginUser(UserMixin):
    """flask-login's view of a models.User."""

    def __init__(self, user):
        self.user = user
        self.id = str(user.id)


@functools.cache
def _dummy_hash():
    """Checked when the address is unknown, so a wrong address costs as much time as a wrong
    password (no account enumeration by timing). Made on first use, not at import."""
    return generate_password_hash(secrets.token_hex(16))


def _throttle_ident(email):
    # Per address and client: an attacker elsewhere cannot lock the owner out of their account.
    raw = f"{email}|{request.remote_addr}"
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _safe_next(target):
    """Only same-site paths are followed after login (no open redirect)."""
    if not target or len(target) > 2000 or not target.isprintable():  # CR/LF/NUL would break the header
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def password_fingerprint(user):
    """Changes whenever the password does; sessions carry it so a password change ends the others."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


def _start_session(user):
    session.clear()  # a fresh session on every login: nothing planted before login survives it
    login_user(LoginUser(user))
    session[PASSWORD_FINGERPRINT_KEY] = password_fingerprint(user)
    session[SESSION_EPOCH_KEY] = user.session_epoch


def end_sessions(user):
    """End every dashboard session of ``user`` server-side: sessions are signed cookies, so a
    copy of one would otherwise stay valid after logout. Returns the new generation."""
    with models.db.atomic():
        models.User.update(session_epoch=models.User.session_epoch + 1).where(models.User.id == user.id).execute()
        user.session_epoch = models.User.get_by_id(user.id).session_epoch
    return user.session_epoch


@bp.before_app_request
def end_stale_session():
    """Log out a session from an older generation (logged out, e.g. a copied cookie) or started
    before the account's password changed."""
    if "_user_id" not in session or not current_user.is_authenticated:
        return
    user = current_user.user
    if session.get(SESSION_EPOCH_KEY, 0) != user.session_epoch or \
            session.get(PASSWORD_FINGERPRINT_KEY) != password_fingerprint(user):
        logout_user()
        session.clear()


@bp.route("/signup", methods=["GET", "POST"])
def signup():
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.index"))
    form = SignupForm()
    if form.validate_on_submit():
        refusal = _signup_refusal()
        if refusal:
            form.form_errors.append(refusal[0])
            return render_template("auth/signup.html", form=form), refusal[1]
        try:
            user = accounts.create_user(form.email.data, form.password.data, app_settings().server.default_plan)
        except accounts.AccountExists:
            form.email.errors.append("An account with this address already exists. Log in instead.")
        else:
            _count_signup()
            _start_session(user)
            flash("Welcome to Inboxlayer. Create an API key and an inbox to start sending.", "success")
            return redirect(url_for("dashboard.index"))
    return render_template("auth/signup.html", form=form), 200 if request.method == "GET" or not form.errors else 422


SIGNUP_WINDOW = 3600  # seconds over which a client's new accounts are counted


def _signup_refusal():
    """(message, status) when this client address has made too many accounts lately, else None.
    Every account can send its plan's quota, so free sign-ups are what a spammer would farm."""
    limit = app_settings().web.signups_per_hour
    if not limit:
        return None
    try:
        made = limits.window_count("signup", request.remote_addr)
    except limits.LimiterUnavailable:
        log.error("sign-up limiter unavailable; refusing sign-ups until Redis is back")
        return "Signing up is temporarily unavailable. Please try again in a minute.", 503
    if made >= limit:
        return "Too many accounts were created from your network recently. Please try again in an hour.", 429
    return None


def _count_signup():
    if app_settings().web.signups_per_hour:
        try:
            limits.count_in_window("signup", request.remote_addr, SIGNUP_WINDOW)
        except limits.LimiterUnavailable:
            log.error("could not count a sign-up")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("dashboard.index"))
    form = LoginForm()
    if not form.validate_on_submit():
        return render_template("auth/login.html", form=form), 200 if request.method == "GET" else 422
    email = form.email.data.strip().lower()
    ident = _throttle_ident(email)
    max_failures = app_settings().web.login_max_failures
    try:
        # Count the attempt as a failure first, then decide: a parallel burst cannot slip more
        # than max_failures tries in between a check and an increment. A success gives it back.
        attempt = limits.count_in_window("login-fail", ident, LOGIN_WINDOW)
    except limits.LimiterUnavailable:
        log.error("login throttle unavailable; refusing logins until Redis is back")
        form.form_errors.append("Signing in is temporarily unavailable. Please try again in a minute.")
        return render_template("auth/login.html", form=form), 503
    if attempt > max_failures:
        form.form_errors.append("Too many failed attempts. Please wait 15 minutes before trying again.")
        return render_template("auth/login.html", form=form), 429
    user = models.User.get_or_none(models.User.email == email)
    password_ok = check_password_hash(user.password_hash if user else _dummy_hash(), form.password.data)
    if user is None or not password_ok:
        form.form_errors.append("Wrong email or password.")
        return render_template("auth/login.html", form=form), 401
    _uncount_attempt(ident)
    _start_session(user)
    return redirect(_safe_next(request.args.get("next")) or url_for("dashboard.index"))


# Take back one counted attempt, never below zero and never on a key that expired meanwhile
# (a DECR there would create a count without an expiry).
_UNCOUNT = """
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n > 0 then redis.call('DECR', KEYS[1]) end
return n
"""


def _uncount_attempt(ident):
    try:
        outbox.connection().register_script(_UNCOUNT)(keys=[outbox.key("login-fail", ident)])
    except redis.RedisError as exc:
        log.error("could not take back a successful login's attempt: %s", exc)


@bp.post("/logout")
def logout():
    if current_user.is_authenticated:
        end_sessions(current_user.user)  # this cookie, and any copy of it, is dead from now on
    logout_user()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


@bp.route("/account", methods=["GET", "POST"])
@login_required
def account():
    form = ChangePasswordForm()
    status = 200
    if form.validate_on_submit():
        user = current_user.user
        if not check_password_hash(user.password_hash, form.current.data):
            form.current.errors.append("That is not your current password.")
            status = 422
        else:
            user.password_hash = generate_password_hash(form.password.data)
            with models.db.atomic():
                models.User.update(password_hash=user.password_hash).where(models.User.id == user.id).execute()
            # This session stays; every other one (and any copied cookie) ends.
            session[SESSION_EPOCH_KEY] = end_sessions(user)
            session[PASSWORD_FINGERPRINT_KEY] = password_fingerprint(user)
            flash("Your password has been changed.", "success")
            return redirect(url_for("auth.account"))
    elif request.method == "POST":
        status = 422
    return render_template("auth/account.html", form=form), status
