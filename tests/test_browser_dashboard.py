"""The dashboard in a real headless chromium (Playwright), against the real SMTP server, the real
relay worker and the moto SES stand-in: nothing in the path from browser to SES is faked."""
import re
import smtplib
import subprocess
import sys
from email.message import EmailMessage

import pytest
from playwright.sync_api import expect

from core import domains
from tests.dnsserver import publish
from tests.fixtures_smtp import tls_context

PASSWORD = "a long enough password"


def signup(page, base, email):
    page.goto(f"{base}/signup")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.fill("#confirm", PASSWORD)
    page.shot("01-signup")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard")


def send_over_smtp(host, port, cafile, username, token, html_part):
    msg = EmailMessage()
    msg["From"] = f"Browser Agent <{username}>"
    msg["To"] = "customer@example.net"
    msg["Subject"] = "Order #1042 shipped"
    msg.set_content("Your order is on its way.\n")
    msg.add_alternative(html_part, subtype="html")
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.starttls(context=tls_context(cafile))
        client.login(username, token)
        client.send_message(msg)
        return client.noop()  # the session is still healthy after the send


def run_worker_burst(subprocess_env):
    """One pass of the real relay worker (`inboxlayer worker --burst`): relays what is queued."""
    done = subprocess.run([sys.executable, "-m", "cli", "worker", "--burst"], env=subprocess_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]


def test_browser_signup_key_inbox_send_sent_outbound_revoke(live_server, browser_page, smtp_server, config,
                                                            subprocess_env, reconfigure):
    page, base = browser_page, live_server.url
    # The inbox page shows the SMTP settings from settings; point them at the running server.
    config["smtp"]["starttls_port"], config["smtp"]["tls_port"] = smtp_server.starttls_port, smtp_server.tls_port
    config["smtp"]["public_host"] = smtp_server.host
    reconfigure()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))

    signup(page, base, "browser@example.com")
    assert page.locator(".usage-head").inner_text().startswith("0 of 500 sends today")
    page.shot("02-dashboard")

    page.click("nav.mainnav >> text=API keys")
    page.fill("#name", "browser agent")
    page.click("button:has-text('Create key')")
    token = page.locator("#new-token-value").inner_text().strip()
    assert re.fullmatch(r"il_[A-Za-z0-9_-]{43}", token)
    # The copy button writes to the clipboard asynchronously: expect() waits for its label to
    # change, and reading the clipboard back proves the key itself was copied.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.click("#new-token button.copy")
    expect(page.locator("#new-token button.copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == token
    page.shot("03-api-key-created")
    page.reload()  # a reload is a GET: the full key is gone for good
    assert token not in page.content() and token[:12] in page.content()

    page.click("nav.mainnav >> text=Inboxes")
    page.fill("#local_part", "browser-agent")
    page.fill("#display_name", "Browser Agent")
    page.click("button:has-text('Create inbox')")
    page.wait_for_url(re.compile(r".*/inboxes/\d+$"))
    address = page.locator("#inbox-address").inner_text()
    assert address == "browser-agent@inboxlayer.dev"
    settings_text = page.locator("#smtp-settings").inner_text()
    assert f"{smtp_server.starttls_port} (STARTTLS, recommended)" in settings_text
    expect(page.locator("#smtp-user")).to_have_text(address)
    page.shot("04-inbox")

    # Send exactly as the inbox page tells the user to: its host, its STARTTLS port, address + key.
    host = page.locator("#smtp-host").inner_text()
    html_part = '<p id="probe">static</p><script>document.getElementById("probe").textContent = "ran"</script>'
    assert send_over_smtp(host, smtp_server.starttls_port, smtp_server.cafile, address, token, html_part)[0] == 250
    run_worker_burst(subprocess_env)

    page.click("a.button:has-text('Sent')")
    expect(page.locator("#sent tbody tr")).to_have_count(1)
    page.shot("05-sent-list")
    page.click("text=Order #1042 shipped")
    expect(page.locator("#message-subject")).to_have_text("Order #1042 shipped")
    expect(page.locator("#message-text")).to_contain_text("Your order is on its way.")
    frame = page.frame_locator("iframe.html-part")
    expect(frame.locator("#probe")).to_have_text("static")  # the message's script never ran
    assert page.locator("iframe.html-part").get_attribute("sandbox") == ""
    page.shot("06-sent-message")

    page.click("nav.mainnav >> text=Outbound")
    row = page.locator("#outbound tbody tr").first
    expect(row.locator(".badge")).to_have_text("sent")
    assert "customer@example.net" in row.inner_text()
    expect(row.locator("td.subject")).to_have_text("Order #1042 shipped")
    page.shot("07-outbound")
    row.locator("a").first.click()
    timeline = page.locator("#timeline").inner_text()
    assert timeline.index("queued") < timeline.index("sent")
    expect(page.locator("#outbound-status")).to_have_text("sent")
    expect(page.locator("#outbound-subject")).to_have_text("Order #1042 shipped")
    page.shot("08-outbound-detail")

    page.click("nav.mainnav >> text=Overview")
    expect(page.locator(".usage-head")).to_have_text(re.compile(r"^1 of 500 sends today"))
    page.shot("09-overview-after-send")

    page.click("nav.mainnav >> text=API keys")
    page.click("button:has-text('Revoke')")
    assert dialogs == ["Revoke “browser agent”? Agents using it will stop working immediately."]
    expect(page.locator(".flash-success")).to_contain_text("is revoked")
    expect(page.locator("#keys .badge")).to_have_text("revoked")
    page.shot("10-key-revoked")

    with smtplib.SMTP(smtp_server.host, smtp_server.starttls_port, timeout=30) as client:
        client.starttls(context=tls_context(smtp_server.cafile))
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login(address, token)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (535, b"5.7.8 Authentication credentials invalid")
    # No CSP violations or script errors on our pages; the one expected message is chromium
    # reporting that it blocked the message's own script inside the sandboxed frame.
    assert [e for e in page.console_errors if "the 'allow-scripts' permission is not set" not in e] == []
    assert any("the 'allow-scripts' permission is not set" in e for e in page.console_errors)


def test_browser_custom_domain_pending_verified_failed(live_server, browser_page, dns_server, config, reconfigure):
    page, base = browser_page, live_server.url
    signup(page, base, "domains@example.com")
    page.click("nav.mainnav >> text=Domains")
    page.fill("#name", "Mail.Example.COM")
    page.click("button:has-text('Add domain')")
    page.wait_for_url(re.compile(r".*/domains/\d+$"))
    assert page.locator("h1").inner_text().startswith("mail.example.com")
    rows = page.locator("#records tbody tr")
    assert rows.count() == 6  # TXT, three DKIM CNAMEs, SPF, DMARC
    shown = [(rows.nth(i).locator("td").nth(1).inner_text(), rows.nth(i).locator("code").nth(1).inner_text(),
              rows.nth(i).locator("code").nth(2).inner_text()) for i in range(6)]
    assert shown[0][0:2] == ("TXT", "_inboxlayer.mail.example.com")
    assert [s[0] for s in shown[1:4]] == ["CNAME"] * 3
    assert all(s[1].endswith("._domainkey.mail.example.com") and s[2].endswith(".dkim.amazonses.com")
               for s in shown[1:4])
    assert shown[4][2] == "v=spf1 include:amazonses.com ~all" and shown[5][1] == "_dmarc.mail.example.com"
    page.shot("11-domain-records")

    page.click("#check-now")
    expect(page.locator("#domain-status")).to_have_text("pending")
    assert page.locator("#domain-reason").inner_text().startswith("Not found in DNS yet: TXT _inboxlayer.mail.example.com")
    page.shot("12-domain-pending")

    # Publish exactly what the page shows, the way a user copies it into their DNS provider.
    publish(dns_server, [{"type": t, "name": n, "value": v} for t, n, v in shown])
    page.click("#check-now")
    expect(page.locator("#domain-status")).to_have_text("verified")
    expect(page.locator(".flash-success")).to_contain_text("is verified")
    page.shot("13-domain-verified")

    # A verified domain whose records break goes failed once dns.recheck_grace is over; no grace here.
    config["dns"]["recheck_grace"] = 0
    reconfigure()
    dkim_name = shown[2][1]
    dns_server.set(dkim_name, "CNAME", "attacker.dkim.amazonses.com.")
    page.click("#check-now")
    expect(page.locator("#domain-status")).to_have_text("failed")
    assert page.locator("#domain-reason").inner_text() == (
        f"DKIM record {dkim_name} points to attacker.dkim.amazonses.com, expected {shown[2][2]}")
    page.shot("14-domain-failed")

    page.click("nav.mainnav >> text=Inboxes")
    page.shot("15-inboxes-domain-choice")
    expect(page.locator("#domain option")).to_have_text(
        ["inboxlayer.dev", "mail.example.com (failed: cannot send until verified)"])
    assert page.console_errors == []
    assert domains.VERIFY_PREFIX in shown[0][2]
    page.click(".account >> text=domains@example.com")
    expect(page.locator("h1")).to_have_text("Account settings")
    page.shot("16-account")


# -- the Sent HTML preview and a phone-sized screen ---------------------------------------------------

class RemoteHost:
    """A loopback HTTP server standing in for a remote image/CSS host (the internet is outside our
    control): it records every request, so 'blocked' means no request ever arrived."""

    def __init__(self):
        import http.server
        import threading

        self.requests = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host.requests.append(self.path)
                self.send_response(404)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def remote_host():
    host = RemoteHost()
    yield host
    host.close()


def submit_message(email, local_part, subject, html_part=None, to="customer@example.net", filename=None):
    """Create an inbox for the signed-up ``email`` and put one message through the one submit path
    (as SMTP and REST do); returns (inbox, outbound)."""
    import io

    import models
    import settings
    from core import accounts
    from core import submit

    with models.db.connection_context():
        user = models.User.get(models.User.email == email)
        with models.db.atomic():
            inbox = accounts.create_inbox(user, local_part, None, settings.get()["server"]["default_domain"])
        msg = EmailMessage()
        msg["From"] = inbox.address
        msg["To"] = to
        msg["Subject"] = subject
        msg.set_content("Plain part.\n")
        if html_part is not None:
            msg.add_alternative(html_part, subtype="html")
        if filename:
            msg.add_attachment(b"data", maintype="application", subtype="octet-stream", filename=filename)
        raw = msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        outbound = submit.submit(user, inbox, inbox.address, [to], io.BytesIO(raw), "smtp")
    return inbox, outbound


def test_browser_sent_html_preview_keeps_inline_styles_blocks_scripts_and_remote_content(live_server, browser_page,
                                                                                        remote_host):
    page, base = browser_page, live_server.url
    signup(page, base, "styles@example.com")
    html_part = (
        f'<html><head><link rel="stylesheet" href="{remote_host.url}/linked.css">'
        f'<style>@import url("{remote_host.url}/imported.css"); #sheet {{ font-weight: 700 }}</style></head><body>'
        '<p id="styled" style="color: rgb(255, 0, 0); padding-left: 12px">inline style</p>'
        '<p id="sheet">style element</p>'
        f'<img id="remote" src="{remote_host.url}/pixel.png" alt="">'
        f'<div id="bg" style="background-image: url({remote_host.url}/bg.png)">background</div>'
        '<img id="inline-image" alt="" src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7">'
        '<script>document.getElementById("styled").textContent = "script ran"</script></body></html>')
    inbox, outbound = submit_message("styles@example.com", "styled", "Styled newsletter", html_part)
    page.goto(f"{base}/inboxes/{inbox.id}/sent/{outbound.message_id}")
    page.wait_for_load_state("load")  # the page's load event waits for the frame's own
    frame = page.frame_locator("iframe.html-part")
    styled = frame.locator("#styled")
    expect(styled).to_have_text("inline style")  # the message's script never ran
    assert styled.evaluate("e => getComputedStyle(e).color") == "rgb(255, 0, 0)"
    assert styled.evaluate("e => getComputedStyle(e).paddingLeft") == "12px"
    assert frame.locator("#sheet").evaluate("e => getComputedStyle(e).fontWeight") == "700"
    assert frame.locator("#inline-image").evaluate("img => img.complete && img.naturalWidth") == 1
    assert frame.locator("#remote").evaluate("img => img.complete && img.naturalWidth") == 0
    page.shot("20-html-preview-styled")
    assert remote_host.requests == []  # no image, background, linked or imported stylesheet was fetched
    # Chromium reports each blocked load; proof that the content was there and the policy stopped it.
    blocked = "\n".join(page.console_errors)
    for path in ("linked.css", "imported.css", "pixel.png", "bg.png"):
        assert f"{remote_host.url}/{path}" in blocked
    assert "the 'allow-scripts' permission is not set" in blocked


PHONE = {"width": 390, "height": 844}  # an iPhone 12-15 screen in CSS pixels

OVERFLOW_PROBE = """() => {
  const width = document.documentElement.clientWidth;
  // Text cut short on purpose ("…", text-overflow: ellipsis) is not overflow; a clipped table is.
  const clipped = e => { for (let a = e.parentElement; a; a = a.parentElement) {
    if (getComputedStyle(a).textOverflow === 'ellipsis') return true; } return false; };
  const wide = [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5 && !e.closest('pre') && !clipped(e))
    .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + (e.className ? '.' + String(e.className).split(' ').join('.') : ''));
  return {scrollWidth: document.documentElement.scrollWidth, wide: wide.slice(0, 5)};
}"""


def test_browser_phone_width_pages_have_no_horizontal_overflow(live_server, browser_page, config):
    """At 390 CSS px nothing runs off the right edge: the page does not scroll sideways and no element
    (table, code, form) sticks out of the viewport clipped (code blocks may scroll inside themselves)."""
    page, base = browser_page, live_server.url
    page.set_viewport_size(PHONE)
    overflowing = {}

    def check(name):
        probe = page.evaluate(OVERFLOW_PROBE)
        page.shot(f"30-phone-{name}")
        if probe["scrollWidth"] > PHONE["width"] or probe["wide"]:
            overflowing[name] = probe

    page.goto(f"{base}/login")
    check("login")
    page.goto(f"{base}/signup")
    check("signup")
    signup(page, base, "a.rather.long.address.for.a.phone@example.com")
    check("overview-empty")

    page.goto(f"{base}/account/keys/")
    page.fill("#name", "phone agent")
    page.click("button:has-text('Create key')")
    expect(page.locator("#new-token")).to_be_visible()  # the new page, not the form page still going
    page.wait_for_load_state("load")  # its stylesheet applied before measuring
    check("api-key-created")
    page.goto(f"{base}/account/keys/")
    check("api-keys")

    page.goto(f"{base}/domains/")
    page.fill("#name", "mail.a-fairly-long-subdomain.example.com")
    page.click("button:has-text('Add domain')")
    page.wait_for_url(re.compile(r".*/domains/\d+$"))
    check("domain")
    page.goto(f"{base}/domains/")
    check("domains")

    long_subject = "Your order #1042 with a subject long enough to wrap " + "x" * 120
    inbox, outbound = submit_message("a.rather.long.address.for.a.phone@example.com",
                                     "a-long-inbox-name-for-support-agents", long_subject,
                                     '<table width="900"><tr><td>A wide HTML mail</td></tr></table>',
                                     to="a.very.long.recipient.address.at.some.company@example.net",
                                     filename="quarterly-report-" + "y" * 80 + ".pdf")
    with __import__("models").db.connection_context():
        import json

        import models

        models.OutboundEmail.update(status="failed", last_error="MessageRejected: " + "z" * 150).where(
            models.OutboundEmail.id == outbound.id).execute()
        models.OutboundEvent.create(outbound=outbound, type="failed", detail=json.dumps(
            {"error": "MessageRejected", "message": "Email address is not verified: " + "w" * 90}))

    page.goto(f"{base}/inboxes/")
    check("inboxes")
    page.goto(f"{base}/inboxes/{inbox.id}")
    check("inbox")
    page.goto(f"{base}/inboxes/{inbox.id}/sent/")
    check("sent-list")
    page.goto(f"{base}/inboxes/{inbox.id}/sent/{outbound.message_id}")
    expect(page.frame_locator("iframe.html-part").locator("td")).to_have_text("A wide HTML mail")
    check("sent-message")  # the 900 px wide mail scrolls inside its frame, not the page
    page.goto(f"{base}/outbound/")
    check("outbound-list")
    page.goto(f"{base}/outbound/{outbound.public_id}")
    expect(page.locator("#outbound-subject")).to_have_text(long_subject)
    check("outbound-detail")
    page.goto(f"{base}/dashboard")
    check("overview")
    page.goto(f"{base}/account")
    check("account")
    assert overflowing == {}
    assert page.console_errors == []
