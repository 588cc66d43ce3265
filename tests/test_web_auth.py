"""Sign up, log in, log out, change password, login throttling, session cookie flags."""
import pytest

import models
from webapp import create_app


def test_signup_creates_user_with_scrypt_hash_and_logs_in(web_factory, config):
    user = web_factory()
    response = user.signup("New.User@Example.COM", "correct horse battery")
    assert response.headers["Location"] == "/dashboard"
    with models.db.connection_context():
        row = models.User.get(models.User.email == "new.user@example.com")
    assert row.password_hash.startswith("scrypt:")
    assert "correct horse battery" not in row.password_hash
    assert row.plan == config["server"]["default_plan"]
    page = user.get("/dashboard").get_data(as_text=True)
    assert "new.user@example.com" in page and "Usage today" in page


def test_signup_duplicate_email_shows_message(web_factory):
    web_factory().signup("dup@example.com")
    second = web_factory()
    response = second.post("/signup", {"email": "DUP@example.com", "password": "another password!",
                                       "confirm": "another password!"}, page="/signup")
    assert response.status_code == 422
    assert "An account with this address already exists." in response.get_data(as_text=True)


def test_login_logout_round_trip(web_factory):
    web_factory().signup("round@example.com", "the right password")
    user = web_factory()
    assert user.get("/dashboard").status_code == 302
    response = user.post("/login", {"email": "Round@Example.com", "password": "the right password"})
    assert (response.status_code, response.headers["Location"]) == (302, "/dashboard")
    user.email = "round@example.com"
    assert user.get("/dashboard").status_code == 200
    response = user.post("/logout", page="/dashboard")
    assert response.headers["Location"] == "/login"
    assert user.get("/dashboard").headers["Location"].startswith("/login")


def test_login_wrong_password_is_refused_with_message(web_factory):
    web_factory().signup("wrong@example.com", "the right password")
    user = web_factory()
    response = user.post("/login", {"email": "wrong@example.com", "password": "not the password"})
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    unknown = user.post("/login", {"email": "nobody@example.com", "password": "not the password"})
    assert unknown.status_code == 401
    assert "Wrong email or password." in unknown.get_data(as_text=True)


def test_login_throttled_after_repeated_failures(web_factory, config, reconfigure):
    config["web"]["login_max_failures"] = 3
    reconfigure()
    web_factory().signup("victim@example.com", "the right password")
    attacker = web_factory()
    for _ in range(3):
        assert attacker.post("/login", {"email": "victim@example.com", "password": "guess"}).status_code == 401
    blocked = attacker.post("/login", {"email": "victim@example.com", "password": "the right password"})
    assert blocked.status_code == 429
    assert "Too many failed attempts. Please wait 15 minutes" in blocked.get_data(as_text=True)
    assert attacker.get("/dashboard").status_code == 302  # even the right password did not log in


def test_login_throttle_is_per_address(web_factory, config, reconfigure):
    config["web"]["login_max_failures"] = 2
    reconfigure()
    web_factory().signup("other@example.com", "the right password")
    client = web_factory()
    for _ in range(2):
        client.post("/login", {"email": "victim@example.com", "password": "guess"})
    ok = client.post("/login", {"email": "other@example.com", "password": "the right password"})
    assert ok.status_code == 302


@pytest.mark.parametrize("target", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"])
def test_login_next_offsite_is_ignored(web_factory, target):
    web_factory().signup("next@example.com", "the right password")
    user = web_factory()
    response = user.post(f"/login?next={target}", {"email": "next@example.com", "password": "the right password"})
    assert response.headers["Location"] == "/dashboard"


@pytest.mark.parametrize("target", ["/%0d%0aSet-Cookie:%20x=1", "/%00abc", "/dash%E2%80%AEboard"])
def test_login_next_with_control_characters_never_splits_headers(web_factory, target):
    web_factory().signup("crlf@example.com", "the right password")
    user = web_factory()
    response = user.post(f"/login?next={target}", {"email": "crlf@example.com", "password": "the right password"})
    assert response.status_code == 302
    assert not any(c in response.headers["Location"] for c in "\r\n\x00")
    assert "x=1" not in response.headers.get("Set-Cookie", "")


def test_login_next_same_site_path_is_followed(web_factory):
    web_factory().signup("next2@example.com", "the right password")
    user = web_factory()
    response = user.post("/login?next=/domains/", {"email": "next2@example.com", "password": "the right password"})
    assert response.headers["Location"] == "/domains/"


def test_change_password_requires_current_and_takes_effect(web, web_factory):
    wrong = web.post("/account", {"current": "not my password", "password": "brand new password",
                                  "confirm": "brand new password"}, page="/account")
    assert wrong.status_code == 422
    assert "That is not your current password." in wrong.get_data(as_text=True)
    ok = web.post("/account", {"current": web.password, "password": "brand new password",
                               "confirm": "brand new password"}, page="/account")
    assert ok.status_code == 302
    fresh = web_factory()
    assert fresh.post("/login", {"email": web.email, "password": web.password}).status_code == 401
    assert fresh.post("/login", {"email": web.email, "password": "brand new password"}).status_code == 302


def test_change_password_ends_other_sessions(web, web_factory):
    laptop = web_factory()
    assert laptop.post("/login", {"email": web.email, "password": web.password}).status_code == 302
    assert laptop.get("/dashboard").status_code == 200
    web.post("/account", {"current": web.password, "password": "brand new password",
                          "confirm": "brand new password"}, page="/account")
    assert laptop.get("/dashboard").headers["Location"].startswith("/login")
    assert web.get("/dashboard").status_code == 200  # the session that changed it stays in


def test_change_password_mismatch_and_short_show_messages(web):
    response = web.post("/account", {"current": web.password, "password": "short", "confirm": "other"},
                        page="/account")
    page = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "Use 10 to 200 characters." in page and "The passwords do not match." in page


def test_session_cookie_httponly_samesite_lax(web_factory):
    user = web_factory()
    response = user.post("/signup", {"email": "cookie@example.com", "password": "a long enough password",
                                     "confirm": "a long enough password"}, page="/signup")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie


def test_session_cookie_secure_when_served_over_https(config):
    config = {**config, "web": {**config["web"], "public_url": "https://app.example.com"}, "TESTING": True}
    app = create_app(config)
    assert app.config["SESSION_COOKIE_SECURE"] is True
    client = app.test_client()
    response = client.get("/login", base_url="https://app.example.com")
    assert "Secure" in response.headers["Set-Cookie"]
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_login_pages_redirect_when_already_logged_in(web):
    assert web.get("/login").headers["Location"] == "/dashboard"
    assert web.get("/signup").headers["Location"] == "/dashboard"
    assert web.get("/").headers["Location"] == "/dashboard"


def test_login_refused_cleanly_when_throttle_store_is_down(web_factory, config):
    from core import outbox

    web_factory().signup("down@example.com", "the right password")
    outbox.configure({**config, "redis": {**config["redis"], "url": "redis://127.0.0.1:1/0"}})  # nothing listens
    response = web_factory().post("/login", {"email": "down@example.com", "password": "the right password"})
    assert response.status_code == 503
    assert "Signing in is temporarily unavailable." in response.get_data(as_text=True)


def test_signups_limited_per_client_address(web_factory, config, reconfigure):
    """Every account gets a sending quota: one client address may not farm accounts."""
    config["web"]["signups_per_hour"] = 2
    reconfigure()
    for n in range(2):
        web_factory().signup(f"farm{n}@example.com")
    third = web_factory()
    refused = third.post("/signup", {"email": "farm2@example.com", "password": "a long enough password",
                                     "confirm": "a long enough password"}, page="/signup")
    assert refused.status_code == 429
    assert "Too many accounts were created from your network recently" in refused.get_data(as_text=True)
    with models.db.connection_context():
        assert models.User.get_or_none(models.User.email == "farm2@example.com") is None
    elsewhere = web_factory()
    elsewhere.client.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    elsewhere.signup("farm2@example.com")  # another network is not affected


def test_failed_signups_do_not_count_toward_the_limit(web_factory, config, reconfigure):
    config["web"]["signups_per_hour"] = 1
    reconfigure()
    web_factory().signup("taken@example.com")
    config["web"]["signups_per_hour"] = 2
    reconfigure()
    duplicate = web_factory().post("/signup", {"email": "taken@example.com", "password": "a long enough password",
                                               "confirm": "a long enough password"}, page="/signup")
    assert duplicate.status_code == 422
    web_factory().signup("second@example.com")  # the refused duplicate used up nothing
