"""The OpenAPI document (postback_router/api/openapi.py): valid, and the same contract as schemas/."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import schemathesis
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from postback_router.api.intake import PARAMETERS
from postback_router.api.openapi import build_openapi_document
from streams.core.schema_checks import fast_validator
from tests import factories as f

DOCUMENT = "urn:postback-router:openapi"


def validator(document: dict[str, Any], component: str) -> jsonschema.Draft202012Validator:
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT, Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator({"$ref": f"{DOCUMENT}#/components/schemas/{component}"}, registry=registry)


@pytest.fixture(autouse=True, params=["as loaded", "after the validators compiled"])
def compiled_validators(request: pytest.FixtureRequest) -> None:
    """fastjsonschema rewrites the cached schemas' $refs in place when compiling: the document must not care."""
    if request.param == "after the validators compiled":
        for name in ("campaign-rules", "offer-source", "conversion"):
            fast_validator(name)


@pytest.mark.parametrize("secret", [True, False])
def test_the_document_is_valid_openapi_31(secret: bool) -> None:
    schema = schemathesis.openapi.from_dict(build_openapi_document(intake_secret_required=secret))
    schema.validate()
    operations = {result.ok().label for result in schema.get_all_operations()}
    assert operations == {
        "PUT /v1/campaigns/{campaign_id}/rules",
        "GET /v1/campaigns/{campaign_id}/rules",
        "DELETE /v1/campaigns/{campaign_id}/rules",
        "PUT /v1/offer-sources/{offer_source_id}",
        "GET /v1/offer-sources/{offer_source_id}",
        "DELETE /v1/offer-sources/{offer_source_id}",
        "GET /v1/postback",
        "POST /v1/postback",
        "GET /postback",
        "POST /postback",
        "PATCH /v1/conversions/{conversion_id}",
        "GET /v1/conversions/{conversion_id}",
        "POST /v1/campaigns/{campaign_id}/rules/test",
        "GET /v1/campaigns",
        "GET /v1/offer-sources",
        "POST /v1/postbacks/{postback_id}/replay",
        "GET /docs",
        "GET /docs/{asset}",
        "GET /openapi.json",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }


def test_every_reference_resolves() -> None:
    document = build_openapi_document(intake_secret_required=True)
    components = document["components"]["schemas"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for item in node for ref in refs(item)]
        return []

    found = refs(document)
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in components, ref


def test_the_embedded_schemas_accept_and_refuse_what_the_contract_does() -> None:
    document = build_openapi_document(intake_secret_required=False)
    rules = f.campaign("camp-1", f.s2s_entry("src"), f.meta_entry("fb"), f.google_entry("g"))
    assert validator(document, "CampaignRules").is_valid(rules)
    assert not validator(document, "CampaignRules").is_valid({"postbacks": []})  # campaign_id required
    assert validator(document, "CampaignRulesInput").is_valid({"postbacks": rules["postbacks"]})
    meta_without_pixel = f.campaign("camp-1", {"id": "fb", "kind": "meta", "credentials": "X"})
    assert not validator(document, "CampaignRules").is_valid(meta_without_pixel)  # the $defs entry's if/then
    assert validator(document, "OfferSource").is_valid({"offer_source_id": "o", "default_status": "pending"})
    assert validator(document, "OfferSourceInput").is_valid({"default_status": "pending"})
    assert not validator(document, "OfferSourceInput").is_valid({"default_status": "sale"})
    assert validator(document, "Conversion").is_valid(f.conversion("cv-1"))
    assert validator(document, "ConversionUpdate").is_valid({"status": "approved", "payout": "1.5"})
    assert not validator(document, "ConversionUpdate").is_valid({"payout": "1.5"})


def test_intake_documents_every_field_it_reads_and_the_secret_only_when_required() -> None:
    with_secret = build_openapi_document(intake_secret_required=True)
    without = build_openapi_document(intake_secret_required=False)
    get = with_secret["paths"]["/v1/postback"]["get"]
    assert [p["name"] for p in get["parameters"]] == list(PARAMETERS)
    # the click id is required under any one of its names, which the form's schema says (allOf);
    # campaign_id may be left out (the click has it)
    assert {p["name"] for p in get["parameters"] if p["required"]} == set()
    assert with_secret["paths"]["/postback"]["get"]["parameters"] == get["parameters"]
    assert get["security"] and set(get["responses"]) == {"200", "400", "401", "403", "503"}
    assert without["paths"]["/v1/postback"]["get"]["security"] == []
    assert "intakeSecretHeader" not in without["components"]["securitySchemes"]


def test_management_routes_need_the_bearer_token() -> None:
    document = build_openapi_document(intake_secret_required=False)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            needs_token = path.startswith(("/v1/campaigns", "/v1/offer-sources", "/v1/conversions", "/v1/postbacks"))
            assert (operation.get("security") == [{"bearerAuth": []}]) is needs_token, (method, path)
            assert ("401" in operation["responses"]) is (needs_token or bool(operation.get("security"))), path


def test_intake_documents_its_400_reasons_and_refuses_macros_in_every_parameter() -> None:
    document = build_openapi_document(intake_secret_required=False)
    get = document["paths"]["/v1/postback"]["get"]
    for reason in ("unfilled_macro", "not_utf8", "repeated_field", "invalid_value"):
        assert reason in get["responses"]["400"]["description"] and reason in get["description"]
    for parameter in get["parameters"]:
        schema = jsonschema.Draft202012Validator(parameter["schema"])
        assert not schema.is_valid("{" + parameter["name"] + "}"), parameter["name"]
    refusal = {
        "error": "invalid postback",
        "reason": "unfilled_macro",
        "fields": [{"field": "clickid", "message": "holds a macro", "reason": "unfilled_macro"}],
    }
    assert validator(document, "Error").is_valid(refusal)
