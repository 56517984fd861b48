"""The OpenAPI 3.1 document of the api, served at /openapi.json. Pure.

The message schemas are the ones in `schemas/` (the contract the workers validate against),
embedded rather than copied, so the document cannot drift from what the service accepts. OpenAPI
3.1 uses JSON Schema 2020-12, so they embed as they are, except that their local `#/$defs/...`
references must point into `components/schemas` once they live inside another document.
"""

from __future__ import annotations

import copy
from typing import Any

from postback_router.api.auth import SECRET_FIELD, SECRET_HEADER
from postback_router.api.conversion_update import conversion_update_schema
from postback_router.api.intake import PARAMETERS, REQUIRED
from schemas import load_schema
from schemas.version import __version__

JSON = "application/json"
_ID = {"type": "string", "minLength": 1, "maxLength": 256}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _embedded(schema_name: str, component: str) -> dict[str, dict[str, Any]]:
    """`schemas/<schema_name>` as components: the schema itself and each of its `$defs`."""
    schema = copy.deepcopy(load_schema(schema_name))
    schema.pop("$schema", None)
    # an $id would make tools resolve references against it, not the document
    local = schema.pop("$id", "") + "#/$defs/"
    definitions = schema.pop("$defs", {})

    def target(ref: str) -> str:
        # fastjsonschema (streams/schema_checks.py) rewrites the cached schemas' references to
        # absolute ones in place when it compiles them: both forms name the same definition
        name = ref.removeprefix(local).removeprefix("#/$defs/")
        return f"#/components/schemas/{component}_{name}"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                key: (
                    target(value)
                    if key == "$ref" and isinstance(value, str) and (value.startswith(("#/$defs/", local)))
                    else rewrite(value)
                )
                for key, value in node.items()
            }
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    components = {f"{component}_{name}": rewrite(definition) for name, definition in definitions.items()}
    components[component] = rewrite(schema)
    return components


def _input_variant(schema: dict[str, Any], id_field: str, description: str) -> dict[str, Any]:
    """The PUT body: the stored document, with its id optional (the path gives it)."""
    variant = copy.deepcopy(schema)
    variant["required"] = [name for name in variant["required"] if name != id_field]
    variant["description"] = description
    return variant


def _response(description: str, schema: dict[str, Any] | None = None, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description}
    if schema is not None:
        response["content"] = {JSON: {"schema": schema}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str) -> dict[str, Any]:
    return _response(description, _ref("Error"))


_UNAUTHORIZED = _response(
    "No valid bearer token (`Authorization: Bearer <API_TOKEN>`).",
    _ref("Error"),
    **{"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
)
_UNAVAILABLE = _error("Kafka did not answer in time, or the api is still starting. Repeat the request.")
_TOO_LARGE = _error("The request body is larger than API_MAX_BODY_BYTES.")
_BAD_JSON = (
    "The body is not a JSON object, or the document is invalid; `fields` names each failing field. A body "
    "that is not JSON has `reason` `not_json`; one that is not UTF-8, or holds a lone surrogate escape such "
    "as `\\ud800`, `not_utf8`."
)


def _document_routes(path_id: str, what: str, stored: str, body: str, notes: str) -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    return {
        "parameters": [{"name": path_id, "in": "path", "required": True, "schema": _ID}],
        "put": {
            "operationId": f"put_{stored}",
            "summary": f"Publish the {what}",
            "description": (
                f"Validated as the workers validate it, then written to its compacted topic (acks=all); the "
                f"answer comes once this api's view holds it, so a GET right after returns it. `{path_id}` in "
                f"the body may be left out (the path gives it); when present it must equal the path's. {notes}"
            ),
            "security": bearer,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref(body)}}},
            "responses": {
                "200": _response("Stored; the document as the workers will read it.", _ref(stored)),
                "400": _error(_BAD_JSON),
                "401": _UNAUTHORIZED,
                "413": _TOO_LARGE,
                "503": _UNAVAILABLE,
            },
        },
        "get": {
            "operationId": f"get_{stored}",
            "summary": f"The {what} the workers use",
            "description": (
                "What the workers match with: a record on the topic that the workers refuse as invalid is "
                "not shown, the previous valid one is."
            ),
            "security": bearer,
            "responses": {
                "200": _response(f"The {what}.", _ref(stored)),
                "401": _UNAUTHORIZED,
                "404": _error(f"No {what} under this id."),
                "503": _UNAVAILABLE,
            },
        },
        "delete": {
            "operationId": f"delete_{stored}",
            "summary": f"Delete the {what}",
            "description": "Writes a tombstone (null value) to the compacted topic.",
            "security": bearer,
            "responses": {
                "204": {"description": "Deleted."},
                "401": _UNAUTHORIZED,
                "404": _error(f"No {what} under this id."),
                "503": _UNAVAILABLE,
            },
        },
    }


_INTAKE_DESCRIPTION = """\
Takes one conversion in, the way an affiliate network calls a tracker's postback URL, and publishes \
it to the `conversions` topic (key: conversion_id, acks=all).

* Field names: `clickid` becomes `click_id`, `txid` `transaction_id`, `payout` (or `sum`, when \
`payout` is absent) the decimal payout, kept exact; `sub1`..`sub20` go to `subs`, the platform click \
ids (`gclid`, `gbraid`, `wbraid`, `fbc`, `fbp`, `ttclid`, `msclkid`, `external_id`) to `click_ids`.
* An empty value counts as absent (a macro the network left empty). Unknown fields are ignored.
* What a network sends by mistake is refused with 400, never guessed at; `reason` says which, and \
each entry of `fields` has its own `reason`: `unfilled_macro`, a value still holding a macro \
(a name of letters, digits, `_`, `-`, `.` starting with a letter or `_`, between `{}`, `[]` or `##`, \
the delimiters maybe percent-encoded: `{clickid}`, `{{sub1}}`, `${sub1}`, `[CLICK_ID]`, `#s1#`, \
`%7Bclickid%7D`; a lone `#` or `[` is no macro); `not_utf8`, a value that is not UTF-8 (an invalid \
percent-encoded sequence such as `%C3%28`, or a surrogate such as `%ED%A0%80`), never replaced with \
U+FFFD; `repeated_field`, a field given more than once (`?clickid=a&clickid=b`, or in both the query \
string and the form). Otherwise `invalid_value` (and `missing_field` for a field). These checks \
apply to the fields listed here; the intake secret is only compared (the header, else the first \
`secret` given), and unknown fields are ignored whatever they hold.
* `occurred_at` is the time the conversion was first received: calling the same postback again \
(the same conversion_id) keeps it.
* Without `conversion_id`, the id is derived from campaign_id, clickid, type and txid (UUID v5): a \
repeated postback for the same click, type and transaction updates the same conversion (a status \
change), a new type or transaction is a new conversion. A repeated postback replaces the \
conversion: send every field again (a missing payout is 0).
* Intake has no personal data fields (email, phone, ip); send those to the `conversions` topic \
directly when a platform postback needs them.
* A 503 means the conversion may or may not have been published: repeat the call; with the same \
fields it is the same conversion again and fires nothing twice.
"""


def _intake_routes(secret_required: bool) -> dict[str, Any]:
    security: list[dict[str, list[str]]] = (
        [{"intakeSecretHeader": []}, {"intakeSecretQuery": []}] if secret_required else []
    )
    responses = {
        "200": _response("Published.", _ref("Accepted")),
        "400": _error(
            "A field is missing or invalid; `fields` names each one (as sent, e.g. `clickid`, `sum`). `reason`: "
            "`unfilled_macro`, `not_utf8`, `repeated_field` or `invalid_value` (see the description)."
        ),
        "503": _UNAVAILABLE,
    }
    if secret_required:
        responses["401"] = _error(f"No intake secret (`{SECRET_HEADER}` header or `{SECRET_FIELD}` field).")
        responses["403"] = _error("Wrong intake secret.")
    query = [
        {"name": name, "in": "query", "required": name in REQUIRED, "schema": schema}
        for name, schema in PARAMETERS.items()
    ]
    form = {"type": "object", "required": list(REQUIRED), "properties": PARAMETERS}
    if secret_required:
        form = {**form, "properties": {**PARAMETERS, SECRET_FIELD: {"type": "string"}}}
    return {
        "get": {
            "operationId": "postback_get",
            "summary": "Take a conversion in (query fields)",
            "description": _INTAKE_DESCRIPTION,
            "security": security,
            "parameters": query,
            "responses": responses,
        },
        "post": {
            "operationId": "postback_post",
            "summary": "Take a conversion in (form fields)",
            "description": _INTAKE_DESCRIPTION + "\nForm fields are read together with the query string's; a "
            "field in both is a 400 (`repeated_field`). A `multipart/form-data` body is read too (file parts "
            "ignored). A URL-encoded form is decoded in the `charset` its Content-Type names (UTF-8 by default); "
            "an unknown charset is a 415.",
            "security": security,
            # multipart is not listed: schemathesis would send field names with control characters,
            # which a multipart header cannot carry (a 400 for a "valid" request in its eyes)
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": form}},
            },
            "responses": {
                **responses,
                "413": _TOO_LARGE,
                "415": _error("The body is not a form (URL-encoded or multipart), or names an unknown charset."),
            },
        },
    }


def _conversion_routes() -> dict[str, Any]:
    return {
        "parameters": [{"name": "conversion_id", "in": "path", "required": True, "schema": _ID}],
        "patch": {
            "operationId": "update_conversion",
            "summary": "Update the status (and type, payout, currency) of a conversion taken in here",
            "description": (
                "Publishes the conversion again to `conversions` with the same conversion_id and occurred_at "
                "and the new fields; the workers treat it as an update (pending -> approved fires what now "
                "matches). Only conversions taken in through this api can be updated: the api keeps their "
                "non-personal fields on the compacted `conversions.index` topic. Personal data is never kept, "
                "so an updated conversion carries no `user` block. A null `type`, `payout` or `currency` "
                "resets it to its default. A payout sent as a JSON number is written as its decimal string "
                '(`12.5` as `"12.5"`), as intake writes it; it must then fit 18 digits before the point and 12 '
                "after."
            ),
            "security": [{"bearerAuth": []}],
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("ConversionUpdate")}}},
            "responses": {
                "202": _response("Published; the updated conversion event.", _ref("Conversion")),
                "400": _error(_BAD_JSON),
                "401": _UNAUTHORIZED,
                "404": _error("Not taken in through this api (or not yet): publish updates to the conversions topic."),
                "413": _TOO_LARGE,
                "503": _UNAVAILABLE,
            },
        },
    }


def _ops_routes() -> dict[str, Any]:
    checks = {"type": "object", "additionalProperties": {"type": "boolean"}}
    readiness = {
        "type": "object",
        "required": ["ready", "checks"],
        "properties": {"ready": {"type": "boolean"}, "checks": checks},
    }
    return {
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {"200": _response("OpenAPI 3.1 document.", {"type": "object"})},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: the event loop answers",
                "responses": {
                    "200": _response(
                        "Alive.",
                        {"type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}}},
                    )
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: connected to Kafka and the compacted topics read to their end",
                "responses": {
                    "200": _response("Ready.", readiness),
                    "503": _response("Not ready; `checks` says what is failing.", readiness),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }


def build_openapi_document(*, intake_secret_required: bool) -> dict[str, Any]:
    """The document for an api whose intake does (or does not) require the shared secret."""
    rules = _embedded("campaign-rules", "CampaignRules")
    offer_source = _embedded("offer-source", "OfferSource")
    conversion = _embedded("conversion", "Conversion")
    reason = {
        "type": "string",
        "description": (
            "A code for what was wrong, where a client can act on it: `unfilled_macro`, `not_utf8`, "
            "`repeated_field`, `missing_field`, `invalid_value` (intake), `not_json`, `not_utf8` (a JSON body)."
        ),
    }
    field_error = {
        "type": "object",
        "required": ["field", "message"],
        "properties": {"field": {"type": "string"}, "message": {"type": "string"}, "reason": reason},
    }
    schemas: dict[str, Any] = {
        **rules,
        "CampaignRulesInput": _input_variant(
            rules["CampaignRules"], "campaign_id", "Campaign rules; campaign_id may be left out."
        ),
        **offer_source,
        "OfferSourceInput": _input_variant(
            offer_source["OfferSource"], "offer_source_id", "An offer source; offer_source_id may be left out."
        ),
        **conversion,
        "ConversionUpdate": conversion_update_schema(),
        "Accepted": {
            "type": "object",
            "required": ["status", "conversion_id"],
            "properties": {"status": {"const": "accepted"}, "conversion_id": {"type": "string"}},
        },
        "FieldError": field_error,
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "reason": reason,
                "fields": {"type": "array", "items": _ref("FieldError")},
            },
        },
    }
    security_schemes: dict[str, Any] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    if intake_secret_required:
        security_schemes["intakeSecretHeader"] = {"type": "apiKey", "in": "header", "name": SECRET_HEADER}
        security_schemes["intakeSecretQuery"] = {"type": "apiKey", "in": "query", "name": SECRET_FIELD}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "postback-router api",
            "version": __version__,
            "description": (
                "Manage the campaign rules and offer sources the workers match conversions with, and take "
                "conversions in the way affiliate networks call a tracker. Every error answer is JSON: "
                '`{"error": "...", "fields": [{"field": "...", "message": "..."}]}` (`fields` when input was '
                "invalid). Management routes need `Authorization: Bearer <API_TOKEN>`."
            ),
        },
        "paths": {
            "/v1/campaigns/{campaign_id}/rules": _document_routes(
                "campaign_id",
                "campaign rules",
                "CampaignRules",
                "CampaignRulesInput",
                "Invalid rules (unknown URL macro, conditional without a condition, repeated entry id...) are "
                "refused with 400; nothing is written.",
            ),
            "/v1/offer-sources/{offer_source_id}": _document_routes(
                "offer_source_id", "offer source", "OfferSource", "OfferSourceInput", ""
            ),
            "/v1/postback": _intake_routes(intake_secret_required),
            "/v1/conversions/{conversion_id}": _conversion_routes(),
            **_ops_routes(),
        },
        "components": {"schemas": schemas, "securitySchemes": security_schemes},
    }
