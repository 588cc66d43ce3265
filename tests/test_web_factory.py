"""The app factory (issue 11): create_app installs the app-wide error pages and template filters
itself (no blueprint does), and the views share one set of helpers (webapp/views.py) and read the
typed settings of their own app. Real app, real database; nothing is mocked."""
import types

import pytest
from flask import Flask
from flask import render_template_string
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.exceptions import InternalServerError

import models
import settings
from core import outbound
from webapp import create_app
from webapp import errors
from webapp import views


def test_error_pages_registered_by_the_factory(app):
    app_wide = {exc: handler for by_class in app.error_handler_spec[None].values()
                for exc, handler in by_class.items()}
    assert app_wide == {CSRFError: errors.handle_csrf, HTTPException: errors.handle_http,
                        InternalServerError: errors.handle_unexpected, Exception: errors.handle_unexpected}
    assert sorted(name for name in app.error_handler_spec if name is not None) == ["api", "mcp"]  # JSON errors: REST, /mcp


def test_error_pages_need_no_dashboard_blueprint(config):
    """The dashboard blueprint no longer installs app-wide handlers: an app with only the error
    module registered answers a crash with the readable 500 page."""
    bare = Flask("bare", template_folder=str(errors.__file__).rsplit("/", 1)[0] + "/templates")
    bare.config.update(SECRET_KEY="x")
    errors.register(bare)

    @bare.get("/boom")
    def boom():
        raise RuntimeError("kaput")

    response = bare.test_client().get("/boom")
    assert response.status_code == 500
    assert "Something went wrong" in response.get_data(as_text=True)


@pytest.mark.parametrize("path, status, text", [
    ("/no/such/page", 404, "Not found"),
    ("/v1/no/such/route", 404, None),
    ("/dashboard", 302, None),  # login_required still redirects, the error pages do not catch it
])
def test_error_pages_same_answers_as_before(client, path, status, text):
    response = client.get(path)
    assert response.status_code == status
    if text:
        assert text in response.get_data(as_text=True)


def test_error_pages_crash_in_a_view_is_a_500_page(app, client):
    @app.get("/test-only-crash")
    def crash():
        raise RuntimeError("kaput")

    response = client.get("/test-only-crash")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert "Something went wrong" in body and "kaput" not in body and "Traceback" not in body


def test_template_filters_installed_by_the_factory(app):
    assert app.jinja_env.filters["bidi_visible"]("invoice\u202efdp.exe") == "invoice[U+202E]fdp.exe"
    assert app.jinja_env.filters["fromjson"]('["a@example.com"]') == ["a@example.com"]
    assert app.jinja_env.filters["fromjson"]("junk") == ["junk"]


@pytest.mark.parametrize("query, page", [("", 1), ("?page=3", 3), ("?page=abc", 1), ("?page=-4", 1),
                                         ("?page=99999999999", views.MAX_PAGE)])
def test_views_page_number_reads_the_query(app, query, page):
    with app.test_request_context(f"/{query}"):
        assert views.page_number() == page


def test_views_get_or_404_is_not_found_for_another_accounts_row(app, account):
    with app.test_request_context("/"), models.db.connection_context():
        assert views.get_or_404(models.Inbox, models.Inbox.id == account.inbox.id) == account.inbox
        with pytest.raises(HTTPException) as info:
            views.get_or_404(models.Inbox, models.Inbox.id == account.inbox.id, models.Inbox.user == -1)
        assert info.value.code == 404


def test_views_app_settings_are_this_apps_typed_settings_built_once(config):
    app = create_app({**config, "TESTING": True})
    with app.app_context():
        built = views.app_settings()
        assert built is app.extensions[views.SETTINGS_EXTENSION]
        assert built == settings.view(app.config["INBOXLAYER"])
        assert built.web.secret_key == "test-secret"
        config["web"]["ops_token"] = "changed"  # read once at creation: a later edit is not seen
        assert views.app_settings() is built
        assert views.app_settings().web.ops_token == ""
    app = create_app({**config, "TESTING": True})  # an app made after the edit sees it
    with app.app_context():
        assert views.app_settings().web.ops_token == "changed"


def test_views_app_settings_are_the_apps_own_not_the_process(config):
    app = create_app({**config, "TESTING": True})
    other = {**config, "web": {**config["web"], "ops_token": "other-process"}}
    settings.use(other)
    with app.app_context():
        assert views.app_settings().web.ops_token == ""
    assert settings.current().web.ops_token == "other-process"


def test_template_globals_are_core_outbounds_status_groups(app):
    assert {name: app.jinja_env.globals[name] for name in views.TEMPLATE_GLOBALS} == {
        "OUTBOUND_ACTIVE": outbound.ACTIVE, "OUTBOUND_FINAL": outbound.FINAL,
        "OUTBOUND_UNDELIVERED": outbound.UNDELIVERED}


@pytest.mark.parametrize("status, shown", [
    ("queued", "not yet (SES has not accepted it)"),
    ("sending", "not yet (SES has not accepted it)"),
    ("failed", "none (failed before SES accepted it)"),
    ("bounced", "none"),
])
def test_macro_ses_message_id_reads_the_active_group(app, status, shown):
    template = '{% import "_macros.html" as m %}{{ m.ses_message_id(row) }}'
    row = types.SimpleNamespace(ses_message_id="", status=status)
    with app.test_request_context("/"):
        assert render_template_string(template, row=row) == f'<span class="muted">{shown}</span>'
