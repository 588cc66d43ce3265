"""Who may hold a custom domain: claims decided by DNS proof, the SES identity a delete may remove,
names nobody may add, the plan's cap and the expiry of claims never verified.

Real parts: the dashboard through Flask's test client, the loopback DNS server, the moto SES server
over HTTP (identities observed with sesv2 get_email_identity), the real database.
"""
import datetime
import threading

import boto3
import pytest
from botocore.exceptions import ClientError

import models
from core import domains
from tests.dnsserver import publish
from tests.fixtures_web import logged_in_user

NAME = "mail.example.com"


@pytest.fixture
def other(web_factory, config):
    """A second logged-in account (the real owner, or the squatter, depending on the test)."""
    return logged_in_user(web_factory, config, "other@example.com")


@pytest.fixture
def sesv2(ses_endpoint):
    return boto3.client("sesv2", endpoint_url=ses_endpoint, region_name="us-east-1")


def identity_exists(sesv2, name):
    try:
        sesv2.get_email_identity(EmailIdentity=name)
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "NotFoundException"
        return False
    return True


def domain_row(domain_id):
    with models.db.connection_context():
        return models.Domain.get_or_none(models.Domain.id == domain_id)


def prove(dns_server, domain_id):
    """Publish the records of claim ``domain_id`` (its own verification token)."""
    publish(dns_server, domains.expected_records(domain_row(domain_id)))


def check_now(user, domain_id):
    response = user.post(f"/domains/{domain_id}/check")
    assert response.status_code == 302
    return response


# -- squatting: DNS proof decides -------------------------------------------------------------------

def test_domain_pending_claim_does_not_block_another_account(web, other):
    squatter_id = web.add_domain(NAME)
    owner_id = other.add_domain(NAME)
    assert squatter_id != owner_id
    squatter, owner = domain_row(squatter_id), domain_row(owner_id)
    assert (squatter.status, owner.status) == ("pending", "pending")
    assert squatter.verification_token != owner.verification_token  # each claim proves its own


def test_domain_dns_proof_wins_over_earlier_pending_claim(web, other, dns_server):
    squatter_id = web.add_domain(NAME)
    squatter_inbox = web.create_inbox("hello", squatter_id)
    owner_id = other.add_domain(NAME)
    prove(dns_server, owner_id)

    check_now(other, owner_id)

    assert domain_row(owner_id).status == "verified"
    assert domain_row(squatter_id) is None  # the claim that never proved anything is dropped
    with models.db.connection_context():
        assert models.Inbox.get_or_none(models.Inbox.id == squatter_inbox) is None
    other.create_inbox("hello", owner_id)  # the address the squatter held is the owner's now
    assert web.get(f"/domains/{squatter_id}").status_code == 404


def test_domain_check_now_on_dropped_claim_says_so(web, other, dns_server):
    squatter_id = web.add_domain(NAME)
    owner_id = other.add_domain(NAME)
    prove(dns_server, owner_id)
    with models.db.connection_context():
        domains.check_domain(owner_id)
    assert web.post(f"/domains/{squatter_id}/check").status_code == 404


def test_domain_verified_by_another_account_cannot_be_added(web, other, dns_server):
    owner_id = web.add_domain(NAME)
    prove(dns_server, owner_id)
    check_now(web, owner_id)

    response = other.post("/domains/", {"name": NAME})

    assert response.status_code == 422
    assert "This domain is already verified by another Inboxlayer account." in response.get_data(as_text=True)


def test_domain_lost_verification_can_be_claimed_and_old_claim_stays_failed(web, other, dns_server, config,
                                                                            reconfigure):
    config["dns"]["recheck_grace"] = 0
    reconfigure()
    old_id = web.add_domain(NAME)
    prove(dns_server, old_id)
    check_now(web, old_id)
    dns_server.clear()  # the domain changed hands: the old owner's records are gone
    check_now(web, old_id)
    assert domain_row(old_id).status == "failed"

    new_id = other.add_domain(NAME)
    prove(dns_server, new_id)
    check_now(other, new_id)

    old = domain_row(old_id)
    assert domain_row(new_id).status == "verified"
    assert (old.status, old.last_error) == ("failed", f"{NAME} was verified by another Inboxlayer account")
    # Both tokens in DNS now: the old claim still cannot become a second verified row.
    prove(dns_server, old_id)
    dns_server.set(f"_inboxlayer.{NAME}", "TXT", *[
        f'"{domains.VERIFY_PREFIX}{domain_row(i).verification_token}"' for i in (old_id, new_id)])
    with models.db.connection_context():
        rechecked = domains.check_domain(old_id)
    assert rechecked.status == "failed"
    assert rechecked.last_error.startswith(f"Another Inboxlayer account has verified {NAME}")
    with models.db.connection_context():
        assert models.Domain.select().where(models.Domain.name == NAME, models.Domain.status == "verified").count() == 1


def test_domain_verified_index_allows_one_verified_row_per_name(web, other):
    first, second = web.add_domain(NAME), other.add_domain(NAME)
    with models.db.connection_context():
        models.Domain.update(status="verified").where(models.Domain.id == first).execute()
        with pytest.raises(models.IntegrityError):
            with models.db.atomic():
                models.Domain.update(status="verified").where(models.Domain.id == second).execute()


# -- the SES identity ---------------------------------------------------------------------------------

def test_domain_delete_keeps_ses_identity_it_did_not_create(web, sesv2):
    sesv2.create_email_identity(EmailIdentity=NAME)  # the operator's own identity, made outside Inboxlayer
    domain_id = web.add_domain(NAME)
    assert domain_row(domain_id).ses_identity_created is False

    web.post(f"/domains/{domain_id}/delete")

    assert domain_row(domain_id) is None
    assert identity_exists(sesv2, NAME)


def test_domain_delete_removes_ses_identity_it_created(web, sesv2):
    domain_id = web.add_domain(NAME)
    assert domain_row(domain_id).ses_identity_created is True
    web.post(f"/domains/{domain_id}/delete")
    assert not identity_exists(sesv2, NAME)


def test_domain_delete_keeps_ses_identity_another_claim_uses(web, other, sesv2):
    first, second = web.add_domain(NAME), other.add_domain(NAME)
    assert (domain_row(first).ses_identity_created, domain_row(second).ses_identity_created) == (True, False)

    web.post(f"/domains/{first}/delete")
    assert identity_exists(sesv2, NAME)
    assert domain_row(second).ses_identity_created is True  # the remaining claim inherits it

    other.post(f"/domains/{second}/delete")
    assert not identity_exists(sesv2, NAME)


def test_domain_dropped_claim_passes_ses_identity_to_winner(web, other, dns_server, sesv2):
    squatter_id, owner_id = web.add_domain(NAME), other.add_domain(NAME)
    prove(dns_server, owner_id)
    check_now(other, owner_id)
    assert domain_row(squatter_id) is None  # the squatter's claim, which created the identity, is dropped
    assert domain_row(owner_id).ses_identity_created is True

    other.post(f"/domains/{owner_id}/delete")

    assert not identity_exists(sesv2, NAME)


def test_domain_add_refused_creates_no_ses_identity(web, config, sesv2, reconfigure):
    config["plans"]["free"]["max_domains"] = 1
    reconfigure()
    web.add_domain("one.example.com")
    response = web.post("/domains/", {"name": "two.example.com"})
    assert response.status_code == 422
    assert not identity_exists(sesv2, "two.example.com")


# -- names nobody may add ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("inboxlayer.dev", "inboxlayer.dev is ours; inboxes on it need no domain setup."),
    ("x.inboxlayer.dev", "inboxlayer.dev is ours; inboxes on it need no domain setup."),
    ("co.uk", "co.uk is a public suffix (like com or co.uk) that no one account owns"),
    ("github.io", "github.io is a public suffix (like com or co.uk) that no one account owns"),
    ("corp.example.net", "corp.example.net is reserved by this Inboxlayer service."),
    ("mx.corp.example.net", "corp.example.net is reserved by this Inboxlayer service."),
    ("example.net", "example.net is a parent domain of corp.example.net, which is ours."),
])
def test_domain_reserved_and_public_names_refused(web, config, sesv2, name, message, reconfigure):
    config["dns"]["reserved_domains"] = ["corp.example.net"]
    reconfigure()
    response = web.post("/domains/", {"name": name})
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Domain.select().count() == 0
    if name != config["server"]["default_domain"]:  # the suite verifies the default domain at SES itself
        assert not identity_exists(sesv2, name)


def test_domain_parent_of_default_domain_refused(web, config, reconfigure):
    config["server"]["default_domain"] = "mail.inboxlayer.dev"
    reconfigure()
    response = web.post("/domains/", {"name": "inboxlayer.dev"})
    assert response.status_code == 422
    assert "inboxlayer.dev is a parent domain of mail.inboxlayer.dev, which is ours." in response.get_data(as_text=True)


@pytest.mark.parametrize("name", ["example.co.uk", "someone.github.io", "mail.example.com"])
def test_blocked_reason_allows_registrable_names(config, name):
    assert domains.blocked_reason(name, config) is None


# -- the plan's cap ---------------------------------------------------------------------------------

def test_domain_cap_refuses_one_over_the_plan(web, config, reconfigure):
    config["plans"]["free"]["max_domains"] = 2
    reconfigure()
    web.add_domain("one.example.com")
    web.add_domain("two.example.com")

    response = web.post("/domains/", {"name": "three.example.com"})

    assert response.status_code == 422
    assert "Your plan allows 2 domains; delete one you no longer use before adding another." in \
        response.get_data(as_text=True)
    with models.db.connection_context():
        assert models.Domain.select().count() == 2


def test_domain_cap_counts_per_account(web, other, config, reconfigure):
    config["plans"]["free"]["max_domains"] = 1
    reconfigure()
    web.add_domain("one.example.com")
    other.add_domain("two.example.com")


def test_domain_cap_frees_a_slot_on_delete(web, config, reconfigure):
    config["plans"]["free"]["max_domains"] = 1
    reconfigure()
    first = web.add_domain("one.example.com")
    web.post(f"/domains/{first}/delete")
    web.add_domain("two.example.com")


# -- expiry of claims never verified ------------------------------------------------------------------

def age(domain_id, seconds):
    with models.db.connection_context():
        models.Domain.update(created_at=models.utcnow() - datetime.timedelta(seconds=seconds)).where(
            models.Domain.id == domain_id).execute()


def test_check_domains_expires_unverified_claim_with_its_inboxes(web, config, dns_server, sesv2):
    domain_id = web.add_domain(NAME)
    inbox_id = web.create_inbox("hello", domain_id)
    age(domain_id, config["dns"]["pending_expiry"] + 1)

    domains.check_domains()

    assert domain_row(domain_id) is None
    with models.db.connection_context():
        assert models.Inbox.get_or_none(models.Inbox.id == inbox_id) is None
    assert not identity_exists(sesv2, NAME)


def test_check_domains_keeps_young_and_once_verified_claims(web, other, config, dns_server):
    young = web.add_domain(NAME)
    once = other.add_domain("other.example.com")
    age(young, config["dns"]["pending_expiry"] - 60)
    age(once, config["dns"]["pending_expiry"] + 1)
    with models.db.connection_context():
        models.Domain.update(status="failed", verified_at=models.utcnow()).where(models.Domain.id == once).execute()

    domains.check_domains()

    assert domain_row(young) is not None
    assert domain_row(once).status == "failed"


def test_domain_cap_holds_under_concurrent_adds(config, account, reconfigure):
    config["plans"]["free"]["max_domains"] = 1
    reconfigure()
    outcomes = []

    def add(n):
        with models.db.connection_context():
            try:
                domains.add_domain(account.user, f"d{n}.example.com")
                outcomes.append("added")
            except domains.DomainRefused as exc:
                outcomes.append(str(exc))

    threads = [threading.Thread(target=add, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["Your plan allows 1 domain; delete one you no longer use before adding another."] * 5 + [
        "added"]
    with models.db.connection_context():
        assert models.Domain.select().where(models.Domain.user == account.user).count() == 1


def test_domain_page_pending_says_others_may_claim_and_when_it_expires(web, config, dns_server):
    domain_id = web.add_domain(NAME)
    expires = domain_row(domain_id).created_at + datetime.timedelta(seconds=config["dns"]["pending_expiry"])
    page = web.get(f"/domains/{domain_id}").get_data(as_text=True)
    assert (f"the first claim whose own TXT record shows up in DNS gets it. A claim not verified by "
            f"<time datetime=\"{expires.isoformat()}Z\">{expires:%Y-%m-%d %H:%M} UTC</time> is removed.") in page
    prove(dns_server, domain_id)
    check_now(web, domain_id)
    assert 'id="domain-claim"' not in web.get(f"/domains/{domain_id}").get_data(as_text=True)


def test_migration_0004_keeps_domains_and_marks_identities_not_ours(config, account):
    from playhouse.migrations import Runner

    with models.db.connection_context():
        runner = Runner(models.db.obj, str(models.MIGRATIONS_DIR))
        runner.down("0004_domain_claims")
        models.db.execute_sql(
            "INSERT INTO domain (user_id, name, status, verification_token, dkim_tokens, created_at) "
            f"VALUES ({account.user.id}, 'old.example.com', 'verified', 't', '[]', '2026-01-01 00:00:00')")
        applied = models.migrate_schema()
        assert applied[0] == "0004_domain_claims"
        old = models.Domain.get(models.Domain.name == "old.example.com")
        assert (old.status, old.ses_identity_created, old.failing_since) == ("verified", False, None)
        other = models.User.create(email="second@example.com", password_hash="h")
        with models.db.atomic():
            models.Domain.create(user=other, name="old.example.com", verification_token="u")  # a pending claim
        third = models.User.create(email="third@example.com", password_hash="h")
        with pytest.raises(models.IntegrityError), models.db.atomic():  # a second verified row for the name
            models.Domain.create(user=third, name="old.example.com", verification_token="v", status="verified")
