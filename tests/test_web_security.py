"""Isolation between accounts, CSRF, security headers and escaping."""
import pytest

import models
from core import accounts
from tests.test_web_pages import submit


@pytest.fixture
def victim(web, dns_server):
    """The first user's objects: a key, a domain, an inbox with a sent message (HTML part)."""
    token = web.create_token("victim key")
    domain_id = web.add_domain("victim.example.com")
    inbox_id = web.create_inbox("victim")
    outbound = submit(web, inbox_id, html="<p>secret</p>")
    with models.db.connection_context():
        token_id = accounts.lookup_token(token).id
    return {"token_id": token_id, "domain_id": domain_id, "inbox_id": inbox_id,
            "message_id": outbound.message_id, "public_id": outbound.public_id}


def object_urls(v):
    return {
        "get": [f"/inboxes/{v['inbox_id']}", f"/inboxes/{v['inbox_id']}/sent/",
                f"/inboxes/{v['inbox_id']}/sent/{v['message_id']}",
                f"/inboxes/{v['inbox_id']}/sent/{v['message_id']}/html",
                f"/inboxes/{v['inbox_id']}/sent/{v['message_id']}.eml",
                f"/outbound/{v['public_id']}", f"/domains/{v['domain_id']}"],
        "post": [f"/inboxes/{v['inbox_id']}/delete", f"/domains/{v['domain_id']}/check",
                 f"/domains/{v['domain_id']}/delete", f"/account/keys/{v['token_id']}/revoke"],
    }


def test_second_user_gets_404_for_every_object_url(victim, web_factory):
    intruder = web_factory()
    intruder.signup("intruder@example.com")
    urls = object_urls(victim)
    for url in urls["get"]:
        response = intruder.get(url)
        assert (url, response.status_code) == (url, 404)
        assert b"secret" not in response.data and b"victim" not in response.data
    for url in urls["post"]:
        assert (url, intruder.post(url).status_code) == (url, 404)
    with models.db.connection_context():  # nothing changed behind the 404s
        assert models.ApiToken.get_by_id(victim["token_id"]).revoked_at is None
        assert models.Inbox.get_or_none(models.Inbox.id == victim["inbox_id"]) is not None
        assert models.Domain.get_by_id(victim["domain_id"]).last_checked_at is None


def test_second_user_lists_show_nothing_of_the_first(victim, web_factory):
    intruder = web_factory()
    intruder.signup("intruder@example.com")
    for url in ("/dashboard", "/inboxes/", "/outbound/", "/domains/", "/account/keys/"):
        page = intruder.get(url).get_data(as_text=True)
        assert "victim" not in page, url
    assert intruder.get(f"/outbound/?inbox={victim['inbox_id']}").status_code == 422


def test_second_user_cannot_create_inbox_on_first_users_domain(victim, web_factory):
    intruder = web_factory()
    intruder.signup("intruder@example.com")
    response = intruder.post("/inboxes/", {"local_part": "hijack", "domain": str(victim["domain_id"])})
    assert response.status_code == 422
    assert "Not a valid choice." in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Inbox.get_or_none(models.Inbox.local_part == "hijack") is None


def test_logged_out_user_is_sent_to_login_for_every_object_url(victim, web_factory):
    stranger = web_factory()
    for url in object_urls(victim)["get"]:
        response = stranger.get(url)
        assert response.status_code == 302 and response.headers["Location"].startswith("/login?next="), url


POST_FORMS = [
    ("/signup", {"email": "csrf@example.com", "password": "a long enough password", "confirm": "a long enough password"}),
    ("/login", {"email": "owner@example.com", "password": "a long enough password"}),
    ("/account", {"current": "a long enough password", "password": "another password!", "confirm": "another password!"}),
    ("/account/keys/", {"name": "csrf"}),
    ("/inboxes/", {"local_part": "csrf", "domain": "0"}),
    ("/domains/", {"name": "csrf.example.com"}),
    ("/logout", {}),
]


@pytest.mark.parametrize("path, data", POST_FORMS)
def test_post_without_csrf_token_is_refused(web, path, data):
    response = web.post(path, data, csrf=False)
    assert response.status_code == 400
    assert "missing its security token" in response.get_data(as_text=True)
    assert web.get("/dashboard").status_code == 200  # still logged in: logout did not happen either
    with models.db.connection_context():
        assert models.ApiToken.select().count() == 0
        assert models.Inbox.select().count() == 0
        assert models.Domain.select().count() == 0
        assert models.User.select().count() == 1


def test_post_with_other_sessions_csrf_token_is_refused(web, web_factory):
    other = web_factory()
    token = other.token("/login")
    response = web.post("/account/keys/", {"name": "x", "csrf_token": token})
    assert response.status_code == 400


def test_object_action_without_csrf_is_refused(victim, web):
    response = web.post(f"/account/keys/{victim['token_id']}/revoke", csrf=False)
    assert response.status_code == 400
    with models.db.connection_context():
        assert models.ApiToken.get_by_id(victim["token_id"]).revoked_at is None


def test_security_headers_on_dashboard_pages(web):
    for url in ("/dashboard", "/login", "/account/keys/", "/nope"):
        headers = web.get(url).headers
        csp = headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"


def test_user_input_is_escaped(web):
    web.post("/account/keys/", {"name": '<img src=x onerror=alert(1)>"'})
    page = web.get("/account/keys/").get_data(as_text=True)
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;&#34;" in page
    inbox_id = web.create_inbox("escape")
    outbound = submit(web, inbox_id, subject='<script>alert("s")</script>', to='"<b>x</b>" <to@example.net>')
    for url in (f"/inboxes/{inbox_id}/sent/", f"/inboxes/{inbox_id}/sent/{outbound.message_id}", "/dashboard"):
        body = web.get(url).get_data(as_text=True)
        assert "<script>alert" not in body and "<b>x</b>" not in body, url


def test_unknown_page_is_friendly_404(web):
    response = web.get("/no/such/page")
    assert response.status_code == 404
    assert "There is nothing here, or it does not belong to your account." in response.get_data(as_text=True)


def test_unknown_api_path_is_json_404(web):
    response = web.get("/v1/no-such-endpoint")
    assert response.status_code == 404
    assert response.is_json


@pytest.mark.parametrize("url", [
    "/inboxes/99999999999999999999999", "/inboxes/99999999999999999999999/sent/",
    "/inboxes/1/sent/99999999999999999999999", "/domains/99999999999999999999999",
    "/outbound/ob_%00", "/outbound/" + "x" * 5000, "/outbound/ob_%F0%9F%92%A9",
])
def test_hostile_object_ids_get_404(web, url):
    assert web.get(url).status_code == 404


@pytest.mark.parametrize("path, data", [
    ("/login", {"email": "a\x00b@example.com", "password": "whatever password"}),
    ("/signup", {"email": "a\x00b@example.com", "password": "a long enough password",
                 "confirm": "a long enough password"}),
    ("/domains/", {"name": "exa\x00mple.com"}),
    ("/inboxes/", {"local_part": "nul\x00", "domain": "0"}),
])
def test_nul_bytes_in_forms_get_a_form_answer(web_factory, path, data):
    user = web_factory()
    if path not in ("/login", "/signup"):
        user.signup("nul@example.com")
    response = user.post(path, data, page="/signup" if path == "/signup" else None)
    assert response.status_code in (401, 422)
    assert "<form" in response.get_data(as_text=True)


def test_hostile_query_strings_get_an_answer(web):
    for query in ("page=-1", "page=99999999999", "page=%00", "status=%00", "inbox=%00", "since=%00"):
        assert web.get(f"/outbound/?{query}").status_code in (200, 422), query


def test_database_down_gets_a_503_page_not_a_traceback(web):
    models.init_database("postgresql://postgres@127.0.0.1:1/unreachable")  # nothing listens on port 1
    for url in ("/dashboard", "/login", "/inboxes/1"):
        response = web.get(url)
        assert response.status_code == 503, url
        page = response.get_data(as_text=True)
        assert "Temporarily unavailable" in page and "Traceback" not in page
    assert web.post("/account/keys/", {"name": "x", "csrf_token": "stale"}).status_code == 400
