"""Fixtures for the web tests (a pytest plugin registered in conftest.py).

- ``web`` / ``web_factory``: a Flask test client that signs up, logs in and posts forms with the
  CSRF token read from the page, like a browser would.
- ``dns_server``: tests/dnsserver.py on loopback, installed as the domain checks' resolver.
- ``live_server``: the app served by a real WSGI server (werkzeug) in a thread, for the browser.
- ``browser_page``: a Playwright page in Debian's headless chromium, with a screenshot helper.
"""
import html
import re
import threading
from types import SimpleNamespace

import pytest
from werkzeug.security import generate_password_hash
from werkzeug.serving import make_server

import models

from tests.dnsserver import DNSServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
CSRF_INPUT = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')


def csrf_token_in(page_html):
    match = CSRF_INPUT.search(page_html)
    assert match, "no CSRF token on the page"
    return html.unescape(match.group(1) or match.group(2))


class WebUser:
    """A signed-in (or not yet) dashboard user driving the app through the test client."""

    def __init__(self, app):
        self.client = app.test_client()
        self.email = None
        self.password = None

    def get(self, path, **kwargs):
        return self.client.get(path, **kwargs)

    def token(self, page="/login"):
        return csrf_token_in(self.client.get(page).get_data(as_text=True))

    def post(self, path, data=None, page=None, csrf=True, **kwargs):
        """POST a form; the CSRF token is read from ``page`` (default: ``path`` itself, or /dashboard)."""
        data = dict(data or {})
        if csrf and "csrf_token" not in data:
            data["csrf_token"] = self.token(page or ("/dashboard" if self.email else "/login"))
        return self.client.post(path, data=data, **kwargs)

    def signup(self, email, password="a long enough password"):
        response = self.post("/signup", {"email": email, "password": password, "confirm": password}, page="/signup")
        assert response.status_code == 302, response.get_data(as_text=True)
        self.email, self.password = email, password
        return response

    def login(self, email, password):
        response = self.post("/login", {"email": email, "password": password}, page="/login")
        assert response.status_code == 302, response.get_data(as_text=True)
        self.email, self.password = email, password
        return response

    def create_token(self, name="agent"):
        response = self.post("/account/keys/", {"name": name})
        assert response.status_code == 201, response.get_data(as_text=True)
        return re.search(r'id="new-token-value"[^>]*>(il_[^<]+)<', response.get_data(as_text=True)).group(1)

    def create_inbox(self, local_part, domain_id=0):
        response = self.post("/inboxes/", {"local_part": local_part, "domain": str(domain_id), "display_name": ""})
        assert response.status_code == 302, response.get_data(as_text=True)
        return int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])

    def add_domain(self, name):
        response = self.post("/domains/", {"name": name})
        assert response.status_code == 302, response.get_data(as_text=True)
        return int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])


@pytest.fixture
def web_factory(app):
    return lambda: WebUser(app)


def logged_in_user(web_factory, config, email):
    """A new account ``email``, logged in through the real form. The account row is made directly
    with a cheap PBKDF2 hash so that the hundreds of tests using it do not each pay for scrypt;
    signup itself (scrypt) is tested in test_web_auth.py."""
    password = "a long enough password"
    with models.db.connection_context(), models.db.atomic():
        models.User.create(email=email, password_hash=generate_password_hash(password, "pbkdf2:sha256:1000"),
                           plan=config["server"]["default_plan"])
    user = web_factory()
    user.login(email, password)
    return user


@pytest.fixture
def web(web_factory, config):
    """A logged-in user (owner@example.com)."""
    return logged_in_user(web_factory, config, "owner@example.com")


@pytest.fixture
def dns_server(config, reconfigure):
    server = DNSServer().start()
    previous = config["dns"]["resolver"]
    config["dns"]["resolver"] = server.address
    reconfigure()
    yield server
    config["dns"]["resolver"] = previous
    reconfigure()
    server.stop()


@pytest.fixture
def live_server(app):
    """The dashboard on a real HTTP socket (threaded werkzeug server); yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield SimpleNamespace(url=f"http://127.0.0.1:{server.server_port}", port=server.server_port)
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture
def browser_page(tmp_path):
    """A fresh Playwright page in headless chromium; ``page.shot(name)`` saves a full-page screenshot
    under the test's tmp dir (``page.screenshots``)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15000)  # as long as the actions' timeout: CI machines are loaded

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15000)
        page = context.new_page()
        page.console_errors = []
        page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(
            f"{msg.text} ({msg.location.get('url')})"))
        page.screenshots = shots
        page.shot = lambda name: page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
        try:
            yield page
        finally:
            context.close()
            browser.close()
