"""The OpenAPI document is true: it lists exactly the routes the app serves, it is a valid
OpenAPI 3 document, and schemathesis' generated requests get no 5xx and only documented,
schema-conforming responses."""
import re

import hypothesis
import schemathesis
from openapi_spec_validator import validate

from tests.fixtures_api import send_body
from webapp.api import openapi

# JSON Schema cannot say "a deliverable address" or "a cursor this API issued", so schema-valid
# data may rightly get a 422; every other check (no 5xx, documented status codes, content type,
# headers, response schema, schema-invalid input refused) stays on.
SEMANTIC_CHECKS = [schemathesis.checks.positive_data_acceptance]
FUZZ_EXAMPLES = 25  # per operation and backend: enough to hit every validator, fast enough for the suite


def werkzeug_rule_to_openapi(rule):
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def served_operations(app):
    operations = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/") or rule.endpoint == "api.unknown_route":
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operations.add((method.lower(), werkzeug_rule_to_openapi(rule.rule)))
    return operations


def documented_operations(document):
    return {(method, path) for path, item in document["paths"].items() for method in item}


def test_openapi_lists_exactly_the_served_routes(app):
    assert documented_operations(openapi.document()) == served_operations(app)


def test_openapi_documents_the_key_scope_refusal_where_a_key_can_get_it():
    """403 key_scope can answer every operation but the four any live key may call (the fuzz test
    uses an all-permission key, so it would not notice a missing 403)."""
    any_key = {("get", "/v1/account"), ("get", "/v1/smtp"), ("get", "/v1/inboxes"), ("get", "/v1/audit")}
    missing = [(method, path) for path, operations in openapi.PATHS.items() for method, op in operations.items()
               if op.get("security") != [] and (method, path) not in any_key and "403" not in op["responses"]]
    assert missing == []


def test_openapi_document_is_valid_openapi_3(anonymous_api):
    response = anonymous_api.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    validate(response.json())
    assert response.json()["paths"] == openapi.document()["paths"]


def test_api_fuzzed_requests_get_documented_answers(api_server, api, account):
    # One stored message and outbound row, so ids in generated requests sometimes exist.
    assert api.post(f"/v1/inboxes/{account.address}/send", json=send_body()).status_code == 202
    loaded = schemathesis.openapi.from_url(f"{api_server}/v1/openapi.json")
    headers = {"Authorization": f"Bearer {account.token}"}
    failures = {}
    operations = [result.ok() for result in loaded.get_all_operations()]
    # schemathesis leaves out the document's own URL; every other operation is fuzzed.
    assert {tuple(o.label.lower().split(" ")) for o in operations} == \
        documented_operations(openapi.document()) - {("get", "/v1/openapi.json")}
    for operation in operations:
        # schemathesis' own pytest plugin does not load under pytest 9, so drive hypothesis directly.
        @hypothesis.given(case=operation.as_strategy())
        @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        def fuzz(case):
            # Half the generated addresses are replaced by the real inbox so the handlers past the
            # ownership check are fuzzed too (a random address is always a 404).
            if "address" in (case.path_parameters or {}) and len(repr(case.body)) % 2 == 0:
                case.path_parameters["address"] = account.address
            case.call_and_validate(headers=headers, excluded_checks=SEMANTIC_CHECKS)

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failures, report all
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
    assert failures == {}
