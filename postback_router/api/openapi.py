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
from postback_router.api.intake import ALIASES, FIRST_NAME_WINS, PARAMETERS, REQUIRED
from postback_router.api.trace_document import trace_schemas
from schemas import load_schema
from schemas.kinds import STATUSES
from schemas.status_maps import DEFAULT_STATUS_MAP, fold
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
* Tracker names are read too: the click id as `clickid`, `click_id`, `cid` (Voluum) or `subid` \
(Keitaro), one of them required; the amount as `payout`, `sum` or `amount` (the first given wins, in \
that order); the type as `type`, `event` or `goal`; the transaction as `txid` or `transaction_id`. \
Two names of the click id, type or transaction given with different values are a 400 \
(`conflicting_fields`, naming both); the same value under two names is taken.
* `campaign_id` may be left out (a network that knows only the click): the conversion is then \
published under its click_id as key, and the worker completes it from its click on the `clicks` \
topic, or refuses it (`conversions.invalid`, `unknown_click`) when the click does not arrive within \
CLICK_GRACE_PERIOD.
* `status` is read case-insensitively and mapped: the four statuses (approved, pending, declined, \
other) as they are, then through the `status_map` of the offer source named by `offer_source_id` \
(when the api knows it), then the service's default map (`INTAKE_STATUS_MAP`; by default `sale`, \
`approve`, `confirmed`, `rebill` approved; `hold`, `lead` pending; `rejected`, `reject`, \
`cancelled`, `canceled` declined). Any other status is a 400 naming the accepted ones.
* An empty value counts as absent (a macro the network left empty). Unknown fields are ignored.
* What a network sends by mistake is refused with 400, never guessed at; `reason` says which, and \
each entry of `fields` has its own `reason`: `unfilled_macro`, a value still holding a macro \
(a name of letters, digits, `_`, `-`, `.` starting with a letter or `_`, between `{}`, `[]` or `##`, \
the delimiters maybe percent-encoded: `{clickid}`, `{{sub1}}`, `${sub1}`, `[CLICK_ID]`, `#s1#`, \
`%7Bclickid%7D`; a lone `#` or `[` is no macro); `not_utf8`, a value that is not UTF-8 (an invalid \
percent-encoded sequence such as `%C3%28`, or a surrogate such as `%ED%A0%80`), never replaced with \
U+FFFD; `repeated_field`, a field given more than once (`?clickid=a&clickid=b`, or in both the query \
string and the form); `conflicting_fields`, two names of one field with different values. \
Otherwise `invalid_value` (and `missing_field` for a field). These checks \
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


def _any_case(text: str) -> str:
    """A pattern matching `text` in any ASCII case (ECMA-262 has no inline `(?i)`); only the characters
    ECMA-262 lets be escaped in its Unicode mode are escaped."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() and c.isascii() else _escape(c) for c in text)


def _escape(c: str) -> str:
    return "\\" + c if c in r"\^$.|?*+()[]{}/" else c


def _status_schema(default_statuses: list[str]) -> dict[str, Any]:
    """`status` as documented: the four statuses and the default map's in any case. An offer source's
    status_map accepts more, which a parameter schema cannot know."""
    names = sorted({*STATUSES, *default_statuses})
    pattern = "^(" + "|".join(_any_case(name) for name in names) + ")?$"
    return {**PARAMETERS["status"], "pattern": pattern}


def _one_name_each() -> dict[str, Any]:
    """The form's rule for aliases: a click id under one name at least, and the click id, type and
    transaction each under one name at most (non-empty: an empty value counts as absent)."""

    def given(*names: str) -> dict[str, Any]:
        return {"required": list(names), "properties": {name: {"minLength": 1} for name in names}}

    single = [
        given(first, second)
        for canonical, names in ALIASES.items()
        if canonical not in FIRST_NAME_WINS
        for i, first in enumerate(names)
        for second in names[i + 1 :]
    ]
    return {"allOf": [{"anyOf": [given(name) for name in ALIASES["clickid"]]}, {"not": {"anyOf": single}}]}


def _intake_routes(secret_required: bool, default_statuses: list[str], path: str) -> dict[str, Any]:
    security: list[dict[str, list[str]]] = (
        [{"intakeSecretHeader": []}, {"intakeSecretQuery": []}] if secret_required else []
    )
    responses = {
        "200": _response("Published.", _ref("Accepted")),
        "400": _error(
            "A field is missing or invalid; `fields` names each one (as sent, e.g. `clickid`, `sum`). `reason`: "
            "`unfilled_macro`, `not_utf8`, `repeated_field`, `conflicting_fields` or `invalid_value` (see the "
            "description)."
        ),
        "503": _UNAVAILABLE,
    }
    parameters = {**PARAMETERS, "status": _status_schema(default_statuses)}
    if secret_required:
        responses["401"] = _error(f"No intake secret (`{SECRET_HEADER}` header or `{SECRET_FIELD}` field).")
        responses["403"] = _error("Wrong intake secret.")
    query = [
        {"name": name, "in": "query", "required": name in REQUIRED and name not in ALIASES, "schema": schema}
        for name, schema in parameters.items()
    ]
    required = [name for name in REQUIRED if name not in ALIASES]
    form = {"type": "object", "required": required, "properties": parameters, **_one_name_each()}
    if secret_required:
        form = {**form, "properties": {**parameters, SECRET_FIELD: {"type": "string"}}}
    operation = "postback" if path == "/v1/postback" else "tracker_postback"
    return {
        "get": {
            "operationId": f"{operation}_get",
            "summary": "Take a conversion in (query fields)",
            "description": _INTAKE_DESCRIPTION,
            "security": security,
            "parameters": query,
            "responses": responses,
        },
        "post": {
            "operationId": f"{operation}_post",
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
        "get": {
            "operationId": "conversion_trace",
            "summary": "What the service did with a conversion: versions, entries fired or not and why, deliveries",
            "description": (
                "From the api's trace index, built from `conversions.evaluated`, `postbacks.results` and "
                "`postbacks.dead-letter` (docs/trace.md): every version the workers evaluated, for each entry of "
                "the campaign whether it fired (postback id, destination, payout sent) or why not, and for each "
                "postback its delivery (attempts, last status and reason, latency, dead-letter). The index "
                "follows the topics within about a second and keeps TRACE_RETENTION (30 days)."
            ),
            "security": [{"bearerAuth": []}],
            "responses": {
                "200": _response("The conversion's trace.", _ref("ConversionTrace")),
                "401": _UNAUTHORIZED,
                "404": _error("Unknown here: never evaluated, not yet indexed, or older than TRACE_RETENTION."),
                "503": _error("The trace index is not running in this api process (see its log)."),
            },
        },
    }


def _replay_route() -> dict[str, Any]:
    return {
        "parameters": [{"name": "postback_id", "in": "path", "required": True, "schema": _ID}],
        "post": {
            "operationId": "replay_postback",
            "summary": "Send again a postback that ended rejected or dead_lettered",
            "description": (
                "Finds the postback's last record on `postbacks.results` and, when it is `rejected` or "
                "`dead_lettered`, writes a replay request (the postback from its `postbacks.dead-letter` record "
                "plus a `replay` object) on its own topic `postbacks.<kind>` with its own key. The dispatcher "
                "owning it starts a new delivery cycle: same postback_id and dedup keys, attempts continued, "
                "one new results record marked `replay` (docs/replay.md). A 202 says the request was written; "
                "the dispatcher decides again from its delivery state (a postback still being delivered "
                "ignores it). The lookup reads the partition of `postbacks.results` and of "
                "`postbacks.dead-letter` holding the key: its cost grows with what those topics retain."
            ),
            "security": [{"bearerAuth": []}],
            "responses": {
                "202": _response("The replay request written.", _ref("ReplayRequested")),
                "401": _UNAUTHORIZED,
                "404": _error("No results record of this postback: unknown, or not final yet."),
                "409": _error("The postback was delivered: a delivered postback is never replayed."),
                "422": _error("No whole copy of the postback was kept (too large to keep): it cannot be replayed."),
                "503": _UNAVAILABLE,
            },
        },
    }


def _replay_schemas() -> dict[str, Any]:
    nullable_string = {"type": ["string", "null"]}
    return {
        "ReplayRequested": {
            "type": "object",
            "required": ["status", "postback_id", "kind", "destination_id", "request", "last_outcome"],
            "properties": {
                "status": {"const": "requested"},
                "postback_id": {"type": "string"},
                "kind": {"type": "string"},
                "destination_id": {"type": "string"},
                "request": {
                    "type": "object",
                    "required": ["request_id", "requested_at"],
                    "properties": {
                        "request_id": {"type": "string"},
                        "requested_at": {"type": "string", "format": "date-time"},
                        "requested_by": {"type": "string"},
                    },
                },
                "last_outcome": {
                    "type": "object",
                    "description": "The results record the replay answers.",
                    "required": ["result", "reason", "finished_at", "replay"],
                    "properties": {
                        "result": {"enum": ["rejected", "dead_lettered"]},
                        "reason": {"type": "string"},
                        "finished_at": nullable_string,
                        "replay": {"type": "integer", "minimum": 0, "description": "its cycle; 0: the first"},
                    },
                },
            },
        }
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


_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]
_NULLABLE_STRING = {"type": ["string", "null"]}


def _rule_test_schemas(conversion: dict[str, Any]) -> dict[str, Any]:
    """The rule test's body and answer (postback_router/api/rule_test.py)."""
    sample = copy.deepcopy(conversion)
    sample["required"] = [
        name for name in sample["required"] if name not in ("conversion_id", "campaign_id", "occurred_at")
    ]
    sample["description"] = (
        "A conversion as the `conversions` topic carries it; `campaign_id` (the path's), `conversion_id` "
        "(`rule-test`) and `occurred_at` (now) may be left out."
    )
    entry = {
        "type": "object",
        "required": [
            "entry_id",
            "kind",
            "enabled",
            "fired",
            "reason",
            "payout_sent",
            "status",
            "status_source",
            "postback_id",
            "url",
        ],
        "properties": {
            "entry_id": {"type": "string"},
            "kind": {"type": "string"},
            "enabled": {"type": "boolean"},
            "destination_id": {"type": "string"},
            "fired": {"type": "boolean"},
            "reason": {
                "enum": [
                    None,
                    "disabled",
                    "type_not_selected",
                    "status_not_selected",
                    "below_min_payout",
                    "already_fired",
                ],
                "description": "Why the entry does not fire; null when it fires.",
            },
            "detail": _NULLABLE_STRING,
            "payout_sent": {
                **_NULLABLE_STRING,
                "description": "The payout the postback carries (after payout_percent).",
            },
            "status": {"type": "string"},
            "status_source": {"enum": ["event", "offer_source", "default"]},
            "postback_id": _NULLABLE_STRING,
            "url": {
                **_NULLABLE_STRING,
                "description": "The rendered S2S URL of a firing s2s entry; credentials and email addresses redacted.",
            },
            "method": _NULLABLE_STRING,
        },
    }
    return {
        "ConversionSample": sample,
        "RuleTest": {
            "type": "object",
            "required": ["conversion"],
            "additionalProperties": False,
            "properties": {
                "conversion": _ref("ConversionSample"),
                "rules": {
                    "anyOf": [_ref("CampaignRulesInput"), {"type": "null"}],
                    "description": "Unsaved campaign rules to test instead of the saved ones.",
                },
            },
        },
        "RuleTestEntry": entry,
        "RuleTestResult": {
            "type": "object",
            "required": ["campaign_id", "rules_source", "conversion_id", "status", "status_source", "fired", "entries"],
            "properties": {
                "campaign_id": {"type": "string"},
                "rules_source": {"enum": ["saved", "request"]},
                "conversion_id": {"type": "string"},
                "type": {"type": "string"},
                "status": {"type": "string"},
                "status_source": {"enum": ["event", "offer_source", "default"]},
                "payout": {"type": "string"},
                "currency": {"type": "string"},
                "fired": {"type": "integer", "minimum": 0},
                "entries": {"type": "array", "items": _ref("RuleTestEntry")},
            },
        },
    }


def _rule_test_route() -> dict[str, Any]:
    return {
        "parameters": [{"name": "campaign_id", "in": "path", "required": True, "schema": _ID}],
        "post": {
            "operationId": "test_campaign_rules",
            "summary": "Test a campaign's rules with a sample conversion (writes nothing)",
            "description": (
                "Runs the sample through the workers' own evaluation (effective status, conditions, payout_percent, "
                "S2S URL rendering) against the campaign's saved rules, or against `rules` when given, and answers "
                "for every entry whether it fires and why not. The offer source's default status comes from this "
                "api's view of offer-sources, as on the workers. Nothing is published. The sample's personal data "
                "(`user`) is validated but never shown."
            ),
            "security": _BEARER,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("RuleTest")}}},
            "responses": {
                "200": _response("Every entry, fired or why not.", _ref("RuleTestResult")),
                "400": _error(
                    "The body, the sample or the rules are invalid; `fields` names each failing field "
                    "(`conversion.payout`, `rules.postbacks.0.url`)."
                ),
                "401": _UNAUTHORIZED,
                "404": _error("No `rules` in the body and no saved rules under this campaign id."),
                "413": _TOO_LARGE,
                "503": _UNAVAILABLE,
            },
        },
    }


def _list_schemas() -> dict[str, Any]:
    changed_at = {
        "type": ["string", "null"],
        "format": "date-time",
        "description": "The time of the record that wrote the document (null when unknown).",
    }
    return {
        "CampaignSummary": {
            "type": "object",
            "required": ["campaign_id", "postbacks", "conditional", "changed_at"],
            "properties": {
                "campaign_id": {"type": "string"},
                "postbacks": {"type": "integer", "minimum": 0, "description": "Number of postback entries."},
                "conditional": {"type": "integer", "minimum": 0, "description": "Entries with an enabled condition."},
                "enabled": {"type": "integer", "minimum": 0, "description": "Entries that are enabled."},
                "changed_at": changed_at,
            },
        },
        "OfferSourceSummary": {
            "type": "object",
            "required": ["offer_source_id", "default_status", "changed_at"],
            "properties": {
                "offer_source_id": {"type": "string"},
                "default_status": {"type": "string"},
                "default_region": _NULLABLE_STRING,
                "changed_at": changed_at,
            },
        },
        **{
            f"{name}List": {
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {
                    "items": {"type": "array", "items": _ref(f"{name}Summary")},
                    "next_cursor": {
                        **_NULLABLE_STRING,
                        "description": "Pass as `cursor` for the next page; null on the last page.",
                    },
                },
            }
            for name in ("Campaign", "OfferSource")
        },
    }


def _list_route(what: str, component: str, operation_id: str) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "summary": f"List the {what}, ordered by id",
            "description": (
                f"The {what} this api's view holds (what the workers match with), ordered by id, optionally only "
                "the ids starting with `prefix`; pages of `limit` items, the next one asked with `cursor`."
            ),
            "security": _BEARER,
            "parameters": [
                {"name": "prefix", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 256}},
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "The `next_cursor` of the previous page (opaque).",
                    "schema": {"type": "string", "pattern": "^([A-Za-z0-9_-]{4})*([A-Za-z0-9_-]{2,3})?$"},
                },
            ],
            "responses": {
                "200": _response(f"A page of {what}.", _ref(component)),
                "400": _error("`limit` or `cursor` is invalid, or `prefix` too long; `fields` names it."),
                "401": _UNAUTHORIZED,
                "503": _UNAVAILABLE,
            },
        }
    }


def _docs_routes() -> dict[str, Any]:
    assets = [
        "swagger-ui.css",
        "index.css",
        "swagger-ui-bundle.js",
        "init.js",
        "favicon-32x32.png",
        "favicon-16x16.png",
    ]
    return {
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This document in Swagger UI (served from the installed package, nothing from the network)",
                "responses": {
                    "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/docs/{asset}": {
            "get": {
                "operationId": "docs_asset",
                "summary": "A file of the /docs page",
                "parameters": [{"name": "asset", "in": "path", "required": True, "schema": {"enum": assets}}],
                "responses": {
                    "200": {
                        "description": "The file.",
                        "content": {
                            media: {"schema": {"type": "string"}}
                            for media in ("text/css", "text/javascript", "image/png")
                        },
                    },
                    "404": _error("No such file."),
                },
            }
        },
    }


def build_openapi_document(
    *, intake_secret_required: bool, default_statuses: list[str] | None = None
) -> dict[str, Any]:
    """The document for an api whose intake does (or does not) require the shared secret, and maps
    statuses with a default map of these keys (INTAKE_STATUS_MAP; the built-in one when None)."""
    statuses = list(DEFAULT_STATUS_MAP) if default_statuses is None else [fold(s) for s in default_statuses]
    rules = _embedded("campaign-rules", "CampaignRules")
    offer_source = _embedded("offer-source", "OfferSource")
    conversion = _embedded("conversion", "Conversion")
    reason = {
        "type": "string",
        "description": (
            "A code for what was wrong, where a client can act on it: `unfilled_macro`, `not_utf8`, "
            "`repeated_field`, `conflicting_fields`, `missing_field`, `invalid_value` (intake), `not_json`, "
            "`not_utf8` (a JSON body)."
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
        **_rule_test_schemas(conversion["Conversion"]),
        **_list_schemas(),
        **trace_schemas(),
        **_replay_schemas(),
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
            "/v1/postback": _intake_routes(intake_secret_required, statuses, "/v1/postback"),
            # the same intake where networks calling trackers send it (RedTrack's `/postback?clickid=...`)
            "/postback": _intake_routes(intake_secret_required, statuses, "/postback"),
            "/v1/conversions/{conversion_id}": _conversion_routes(),
            "/v1/campaigns/{campaign_id}/rules/test": _rule_test_route(),
            "/v1/campaigns": _list_route("campaigns", "CampaignList", "list_campaigns"),
            "/v1/offer-sources": _list_route("offer sources", "OfferSourceList", "list_offer_sources"),
            "/v1/postbacks/{postback_id}/replay": _replay_route(),
            **_docs_routes(),
            **_ops_routes(),
        },
        "components": {"schemas": schemas, "securitySchemes": security_schemes},
    }
