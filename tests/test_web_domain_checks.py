"""Custom-domain verification against a real DNS server on loopback and the moto SES stand-in."""
import datetime
import json

import boto3
import pytest

import models
from core import domains
from tests.dnsserver import publish
from tests.dnsserver import txt


def add_domain(user, name="mail.example.com"):
    with models.db.connection_context():
        return domains.add_domain(user, name)


def test_create_identity_registers_domain_with_ses(config, ses_endpoint):
    tokens, created = domains.create_identity("mail.example.com")
    identity = boto3.client("sesv2", endpoint_url=ses_endpoint, region_name="us-east-1").get_email_identity(
        EmailIdentity="mail.example.com")
    assert identity["IdentityType"] == "DOMAIN"
    assert created is True
    assert len(tokens) == 3 and len(set(tokens)) == 3
    assert all(len(t) == 32 and t.isalnum() and t == t.lower() for t in tokens)


def test_create_identity_existing_identity_is_reused(config):
    domains.create_identity("mail.example.com")
    tokens, created = domains.create_identity("mail.example.com")
    assert (len(tokens), created) == (3, False)


def test_expected_records_list_txt_dkim_spf_dmarc(config, account):
    domain = add_domain(account.user)
    records = domains.expected_records(domain)
    tokens = json.loads(domain.dkim_tokens)
    assert records[0] == {"type": "TXT", "name": "_inboxlayer.mail.example.com",
                          "value": "inboxlayer-verification=" + domain.verification_token,
                          "purpose": "Ownership", "required": True}
    assert [(r["name"], r["value"]) for r in records if r["type"] == "CNAME"] == [
        (f"{t}._domainkey.mail.example.com", f"{t}.dkim.amazonses.com") for t in tokens]
    assert {"type": "TXT", "name": "mail.example.com", "value": "v=spf1 include:amazonses.com ~all",
            "purpose": "SPF (recommended)", "required": False} in records
    assert [r["name"] for r in records if r["purpose"].startswith("DMARC")] == ["_dmarc.mail.example.com"]


def test_check_domain_records_missing_is_pending(config, account, dns_server):
    domain = add_domain(account.user)
    checked = domains.check_domain(domain.id)
    assert checked.status == "pending"
    assert checked.last_error.startswith("Not found in DNS yet: TXT _inboxlayer.mail.example.com, CNAME ")
    assert checked.last_checked_at is not None and checked.verified_at is None
    assert ("_inboxlayer.mail.example.com", "TXT") in dns_server.queries


def test_check_domain_records_published_is_verified(config, account, dns_server):
    domain = add_domain(account.user)
    publish(dns_server, domains.expected_records(domain))
    checked = domains.check_domain(domain.id)
    assert (checked.status, checked.last_error) == ("verified", None)
    assert checked.verified_at is not None


def test_check_domain_partial_records_names_the_missing_ones(config, account, dns_server):
    domain = add_domain(account.user)
    records = domains.expected_records(domain)
    publish(dns_server, records[:2])  # the TXT and the first DKIM CNAME
    checked = domains.check_domain(domain.id)
    tokens = json.loads(domain.dkim_tokens)
    assert checked.status == "pending"
    assert checked.last_error == ("Not found in DNS yet: "
                                  f"CNAME {tokens[1]}._domainkey.mail.example.com, "
                                  f"CNAME {tokens[2]}._domainkey.mail.example.com")


def test_check_domain_wrong_dkim_record_is_failed_with_reason(config, account, dns_server):
    domain = add_domain(account.user)
    records = domains.expected_records(domain)
    publish(dns_server, records)
    wrong = records[2]
    dns_server.set(wrong["name"], "CNAME", "someone-else.dkim.amazonses.com.")
    checked = domains.check_domain(domain.id)
    assert checked.status == "failed"
    assert checked.last_error == (f"DKIM record {wrong['name']} points to someone-else.dkim.amazonses.com, "
                                  f"expected {wrong['value']}")


def test_check_domain_wrong_verification_token_is_failed(config, account, dns_server):
    domain = add_domain(account.user)
    publish(dns_server, domains.expected_records(domain))
    dns_server.set("_inboxlayer.mail.example.com", "TXT", txt("inboxlayer-verification=not-the-token"))
    checked = domains.check_domain(domain.id)
    assert checked.status == "failed"
    assert checked.last_error == ("TXT _inboxlayer.mail.example.com holds a different verification token "
                                  "than this domain's")


def test_check_domain_unrelated_txt_counts_as_missing(config, account, dns_server):
    domain = add_domain(account.user)
    dns_server.set("_inboxlayer.mail.example.com", "TXT", txt("google-site-verification=abc"))
    assert domains.check_domain(domain.id).status == "pending"


def test_check_domain_fixed_record_recovers_from_failed(config, account, dns_server):
    domain = add_domain(account.user)
    records = domains.expected_records(domain)
    dns_server.set(records[1]["name"], "CNAME", "wrong.example.net.")
    assert domains.check_domain(domain.id).status == "failed"
    publish(dns_server, records)
    assert domains.check_domain(domain.id).status == "verified"


def test_check_domain_dns_unreachable_keeps_status(config, account, dns_server):
    domain = add_domain(account.user)
    publish(dns_server, domains.expected_records(domain))
    assert domains.check_domain(domain.id).status == "verified"
    dns_server.stop()  # nothing answers on that port any more: every lookup times out
    checked = domains.check_domain(domain.id)
    assert checked.status == "verified"
    assert checked.last_error.startswith("DNS lookup failed, will retry: ")


def test_check_domain_bad_resolver_setting_keeps_status(config, account, reconfigure):
    domain = add_domain(account.user)
    config["dns"]["resolver"] = "not-an-ip:53"
    reconfigure()
    checked = domains.check_domain(domain.id)
    assert (checked.status, checked.last_error) == ("pending", "DNS lookup failed, will retry: resolver misconfigured")


def test_check_domains_checks_unchecked_pending_and_failed(config, account, dns_server):
    pending = add_domain(account.user, "a.example.com")
    failed = add_domain(account.user, "b.example.com")
    publish(dns_server, domains.expected_records(pending))
    with models.db.connection_context():
        models.Domain.update(status="failed").where(models.Domain.id == failed.id).execute()
    assert domains.check_domains() == 2
    with models.db.connection_context():
        assert models.Domain.get_by_id(pending.id).status == "verified"
        assert models.Domain.get_by_id(failed.id).status == "pending"  # records missing, no wrong one


def test_check_domains_skips_recently_checked(config, account, dns_server):
    domain = add_domain(account.user)
    assert domains.check_domains() == 1
    assert domains.check_domains() == 0  # checked moments ago, within dns.check_interval
    with models.db.connection_context():
        models.Domain.update(last_checked_at=models.utcnow() - datetime.timedelta(
            seconds=config["dns"]["check_interval"])).where(models.Domain.id == domain.id).execute()
    assert domains.check_domains() == 1
    with models.db.connection_context():
        assert models.Domain.get_by_id(domain.id).status == "pending"


def test_check_domain_deleted_domain_returns_none(config):
    assert domains.check_domain(123456) is None


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("[::1]:5353", ("::1", 5353)),
    ("::1", ("::1", 53)),
])
def test_split_host_port_resolver_setting(value, expected):
    assert domains._split_host_port(value) == expected


def test_periodic_tasks_include_domain_checks(config, account, dns_server):
    from smtpd_worker import periodic

    path = "core.domains:check_domains"
    assert (config["dns"]["check_interval"], path) in periodic.tasks(config)
    domain = add_domain(account.user)
    publish(dns_server, domains.expected_records(domain))
    assert periodic.run_due([[config["dns"]["check_interval"], path, 0.0]]) == [path]
    with models.db.connection_context():
        assert models.Domain.get_by_id(domain.id).status == "verified"
