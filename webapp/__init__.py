"""Flask app factory: dashboard, REST API v1 and the SES webhook."""
import secrets

from flask import Flask
from flask import request
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

import models
import runtime
import settings
from webapp import api
from webapp import api_keys
from webapp import auth
from webapp import dashboard
from webapp import domains
from webapp import endpoints
from webapp import errors
from webapp import mcp
from webapp import ops
from webapp import suppressions
from webapp import views
from webapp import webhooks
from webapp.auth import LoginUser

csrf = CSRFProtect()
login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message_category = "info"

MAX_REQUEST_BODY = 2**20  # bytes; forms and JSON bodies other than an API send are far smaller


def create_app(config=None):
    """Build the app. ``config`` is a settings dict (``settings.load_config()``); Flask keys
    such as ``TESTING`` may be mixed in at the top level."""
    config = dict(config or settings.get())
    flask_overrides = {k: config.pop(k) for k in list(config) if k.isupper()}
    settings.check_web_production(config)  # SettingsError: no secret key or SNS topics in production
    runtime.configure(config)
    typed = settings.current()  # built once by runtime.configure from this dict
    web = typed.web

    app = Flask(__name__)
    app.config.from_mapping(flask_config(web), INBOXLAYER=config)
    app.extensions[views.SETTINGS_EXTENSION] = typed
    app.config.update(flask_overrides)
    if web.trusted_proxies:
        # Behind a load balancer the client address (login throttling) and scheme come from
        # X-Forwarded-*; trust exactly as many hops as the operator says are ours.
        proxies = web.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)

    csrf.init_app(app)
    login_manager.init_app(app)
    app.before_request(open_db)
    app.teardown_request(close_db)
    app.after_request(security_headers)
    errors.register(app)
    app.jinja_env.filters.update(views.TEMPLATE_FILTERS)
    app.jinja_env.globals.update(views.TEMPLATE_GLOBALS)

    for module in (auth, dashboard, api_keys, domains, suppressions, endpoints, webhooks, ops, api, mcp):
        app.register_blueprint(module.bp)
    csrf.exempt(api.bp)
    csrf.exempt(webhooks.bp)
    csrf.exempt(mcp.bp)
    return app


def flask_config(web):
    """Flask's own settings for the ``[web]`` section ``web``."""
    https = served_over_https(web)
    return dict(
        SECRET_KEY=web.secret_key or secrets.token_hex(32),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BODY,  # the API's send view raises its own limit (webapp/api/sending.py)
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=https,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=https,
        WTF_CSRF_TIME_LIMIT=None,
    )


def served_over_https(web):
    return web.public_url.startswith("https://")


def open_db():
    """One connection per request, returned to the pool in teardown."""
    ctx = models.db.connection_context()
    ctx.__enter__()
    request.environ["inboxlayer.db_ctx"] = ctx


def close_db(exc):
    ctx = request.environ.pop("inboxlayer.db_ctx", None)
    if ctx is not None:
        ctx.__exit__(None, None, None)


CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                           "frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if served_over_https(views.app_settings().web):
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


@login_manager.user_loader
def load_user(user_id):
    user = models.User.get_or_none(models.User.id == int(user_id)) if str(user_id).isdigit() else None
    return LoginUser(user) if user else None
