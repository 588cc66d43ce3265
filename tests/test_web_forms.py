"""Bad input in every dashboard form gets a clear message on the form, never a 500."""
import pytest

import models

LONG = "x" * 300


@pytest.mark.parametrize("data, message", [
    ({"email": "", "password": "a long enough password", "confirm": "a long enough password"}, "Enter your email address."),
    ({"email": "not-an-address", "password": "a long enough password", "confirm": "a long enough password"},
     "An email address must have an @-sign."),
    ({"email": LONG + "@example.com", "password": "a long enough password", "confirm": "a long enough password"},
     "That address is too long."),
    ({"email": "a@b@example.com", "password": "a long enough password", "confirm": "a long enough password"},
     "The part after the @-sign contains invalid characters"),
    ({"email": "ok@example.com", "password": "", "confirm": ""}, "Enter a password."),
    ({"email": "ok@example.com", "password": "short", "confirm": "short"}, "Use 10 to 200 characters."),
    ({"email": "ok@example.com", "password": "p" * 201, "confirm": "p" * 201}, "Use 10 to 200 characters."),
    ({"email": "ok@example.com", "password": "a long enough password", "confirm": "different"},
     "The passwords do not match."),
])
def test_signup_bad_input_shows_message(web_factory, data, message):
    response = web_factory().post("/signup", data, page="/signup")
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.User.select().count() == 0


@pytest.mark.parametrize("data, message", [
    ({"email": "", "password": "x"}, "Enter your email address."),
    ({"email": "a@example.com", "password": ""}, "Enter your password."),
    ({"email": LONG, "password": "x"}, "Field cannot be longer than 254 characters."),
])
def test_login_bad_input_shows_message(web_factory, data, message):
    response = web_factory().post("/login", data)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)


@pytest.mark.parametrize("name, message", [
    ("", "Give the key a name"),
    ("   ", "Give the key a name"),
    ("k" * 101, "Use at most 100 characters."),
    ("tab\x00null", "Use printable characters only."),
])
def test_api_key_bad_name_shows_message(web, name, message):
    response = web.post("/account/keys/", {"name": name})
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.ApiToken.select().count() == 0


@pytest.mark.parametrize("data, message", [
    ({"local_part": "", "domain": "0"}, "Choose the part before the @."),
    ({"local_part": "a" * 65, "domain": "0"}, "Use at most 64 characters."),
    ({"local_part": "bad name", "domain": "0"}, "Use letters, digits"),
    ({"local_part": "évé", "domain": "0"}, "Use letters, digits"),
    ({"local_part": ".dot", "domain": "0"}, "Use letters, digits"),
    ({"local_part": "a..b", "domain": "0"}, "Use letters, digits"),
    ({"local_part": "a@b", "domain": "0"}, "Use letters, digits"),
    ({"local_part": "ok", "domain": "abc"}, "Invalid Choice: could not coerce."),
    ({"local_part": "ok", "domain": "424242"}, "Not a valid choice."),
    # Display names follow the API's rule (core.accounts.clean_display_name; the full table is in test_display_names.py).
    ({"local_part": "ok", "domain": "0", "display_name": "d" * 101}, "Must be at most 100 characters."),
    ({"local_part": "ok", "domain": "0", "display_name": "tab\x07bell"}, "Must be one line without control characters."),
    ({"local_part": "ok", "domain": "0", "display_name": "=?utf-8?q?Evil?="}, "Must not contain RFC 2047 encoded-words"),
])
def test_inbox_bad_input_shows_message(web, data, message):
    response = web.post("/inboxes/", data)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Inbox.select().count() == 0


def test_inbox_display_name_line_breaks_are_refused(web):
    # Like the API: a header value is one line, and a refusal says so rather than guessing a fix.
    response = web.post("/inboxes/", {"local_part": "folded", "domain": "0",
                                      "display_name": "line\r\nBcc: x@example.com"})
    assert response.status_code == 422
    assert "Must be one line without control characters." in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Inbox.select().count() == 0


def test_inbox_duplicate_address_shows_message(web, web_factory):
    web.create_inbox("taken")
    other = web_factory()
    other.signup("other@example.com")
    for user in (web, other):
        response = user.post("/inboxes/", {"local_part": "Taken", "domain": "0"})
        assert response.status_code == 422
        assert "That address is already taken. Choose another name." in response.get_data(as_text=True)


@pytest.mark.parametrize("name, message", [
    ("", "Enter a domain name"),
    ("localhost", "That is not a valid domain name"),
    ("exa mple.com", "That is not a valid domain name"),
    ("-bad.example.com", "That is not a valid domain name"),
    ("a" * 64 + ".com", "That is not a valid domain name"),
    (("a" * 60 + ".") * 5 + "com", "A domain name has at most 253 characters."),
    ("http://example.com/", "That is not a valid domain name"),
    ("inboxlayer.dev", "inboxlayer.dev is ours"),
    ("x.inboxlayer.dev", "inboxlayer.dev is ours"),
])
def test_domain_bad_input_shows_message(web, name, message):
    response = web.post("/domains/", {"name": name})
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Domain.select().count() == 0


def test_domain_duplicate_shows_message(web):
    # Another account's claims: tests/test_domains_claims.py (a pending claim does not block them).
    web.add_domain("mail.example.com")
    response = web.post("/domains/", {"name": "MAIL.example.com."})
    assert response.status_code == 422
    assert "You have already added this domain." in response.get_data(as_text=True)


def test_domain_unicode_name_is_stored_as_idna(web):
    domain_id = web.add_domain("bücher.example")
    with models.db.connection_context():
        assert models.Domain.get_by_id(domain_id).name == "xn--bcher-kva.example"


def test_domain_ses_unreachable_shows_message(web, config, reconfigure):
    config["ses"]["endpoint_url"] = "http://127.0.0.1:9"  # nothing listens on the discard port
    config["ses"]["connect_timeout"] = 1
    reconfigure()
    response = web.post("/domains/", {"name": "mail.example.com"})
    assert response.status_code == 503
    assert "Amazon SES could not set up this domain right now" in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Domain.select().count() == 0
