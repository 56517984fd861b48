"""The api's aiohttp application: routes, authentication, JSON errors, metrics.

Handlers are thin: the decisions are in `intake.py`, `conversion_update.py`, `auth.py` and the
workers' own validation; the state is behind `Backend`. Every answer, errors included (404, 405,
413, 500 from aiohttp itself), is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry

from postback_router.api.auth import Verdict, check_bearer, check_intake_secret
from postback_router.api.backend import Backend, ListedTable, Table, Unavailable, Write
from postback_router.api.conversion_update import index_entry, updated_conversion
from postback_router.api.docs_page import add_docs_routes
from postback_router.api.intake import (
    PostbackRefused,
    RefusedField,
    conversion_from_postback,
    keep_first_occurred_at,
    known_charset,
    read_fields,
    split_urlencoded,
)
from postback_router.api.listing import Listed, campaign_item, list_answer, offer_source_item, parse_list_query
from postback_router.api.metrics import UNMATCHED_ROUTE, ApiMetrics
from postback_router.api.openapi import build_openapi_document
from postback_router.api.replay_route import KafkaPostbackReplays, PostbackReplays, replay_postback
from postback_router.api.rule_test import RuleTestRefused, read_rule_test, rule_test_answer
from postback_router.api.trace_document import TraceLookup
from schemas.errors import FieldError, InvalidInput
from schemas.kinds import STATUSES
from schemas.status_maps import fold, folded
from service.ops_http import Readiness, add_ops_routes
from service.settings import Settings
from streams.core.conversion import conversion_key
from streams.core.explanation import explain_conversion
from streams.core.offer_sources import OfferSource, parse_offer_source
from streams.core.rules import parse_campaign_rules

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
MAX_ID_LENGTH = 256  # campaign_id, offer_source_id and conversion_id, as in schemas/


@dataclass(frozen=True, slots=True)
class _Documents:
    """A compacted topic of documents managed through PUT/GET/DELETE: campaign rules or offer sources."""

    table: Table
    id_field: str
    what: str
    parse: Callable[[bytes | None, bytes], object]  # the workers' parser: the validation they apply


RULES = _Documents("campaign_rules", "campaign_id", "campaign rules", parse_campaign_rules)
OFFER_SOURCES = _Documents("offer_sources", "offer_source_id", "offer source", parse_offer_source)


def error_response(
    status: int,
    error: str,
    fields: Sequence[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> web.Response:
    """`{"error", "reason"?, "fields"?: [{"field", "message", "reason"?}]}`: `reason` is a code a
    client can act on (intake's refusals, a body that is not JSON or not UTF-8)."""
    body: dict[str, Any] = {"error": error}
    if reason is not None:
        body["reason"] = reason
    if fields is not None:
        body["fields"] = [_field_error(f) for f in fields]
    return _json(body, status, headers)


def _field_error(error: FieldError) -> dict[str, str]:
    # the workers' parsers call the whole record "(record)"; here it is the request body
    shown = {"field": "(body)" if error.field == "(record)" else error.field, "message": error.message}
    if isinstance(error, RefusedField):
        shown["reason"] = error.reason
    return shown


def _refusal(refused: PostbackRefused) -> web.Response:
    return error_response(400, "invalid postback", refused.errors, reason=refused.reason)


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


class _Reject(Exception):
    """Raised by a handler's checks to answer with `response` at once."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class _KeyedLocks:
    """One lock per key, held only while in use: intake calls for the same conversion_id run one
    after the other in this process, so that the second reads the index entry the first wrote."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Api:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        metrics: ApiMetrics,
        clock: Callable[[], datetime] = utc_now,
        traces: TraceLookup | None = None,
        replays: PostbackReplays | None = None,
    ) -> None:
        assert settings.api_token is not None, "the api needs API_TOKEN (checked by the cli)"
        self._token = settings.api_token
        self._intake_secret = settings.intake_secret
        self._max_conversion_bytes = settings.max_conversion_bytes
        self._default_status = settings.default_status  # the rule test resolves statuses as the workers do
        self._max_body_bytes = settings.api_max_body_bytes
        self._status_map = settings.intake_status_map
        self._backend = backend
        self._metrics = metrics
        self._clock = clock
        self._intake_locks = _KeyedLocks()
        self._traces = traces
        self._replays = replays or KafkaPostbackReplays(settings.kafka, settings.topics)
        self._openapi = orjson.dumps(
            build_openapi_document(
                intake_secret_required=self._intake_secret is not None, default_statuses=list(self._status_map)
            )
        )

    def add_routes(self, app: web.Application) -> None:
        route = app.router.add_route  # not add_get: that adds HEAD too, and a HEAD must not take a conversion in
        for path, documents in (
            ("/v1/campaigns/{campaign_id}/rules", RULES),
            ("/v1/offer-sources/{offer_source_id}", OFFER_SOURCES),
        ):
            route("PUT", path, self._document_handler(self.put_document, documents))
            route("GET", path, self._document_handler(self.get_document, documents))
            route("DELETE", path, self._document_handler(self.delete_document, documents))
        # /postback: the path networks calling trackers use (RedTrack's `/postback?clickid=...`)
        for path in ("/v1/postback", "/postback"):
            route("GET", path, self.postback)
            route("POST", path, self.postback)
        route("PATCH", "/v1/conversions/{conversion_id}", self.update_conversion)
        route("GET", "/v1/conversions/{conversion_id}", self.conversion_trace)
        route("GET", "/openapi.json", self.openapi)
        route("POST", "/v1/campaigns/{campaign_id}/rules/test", self.test_rules)
        route("GET", "/v1/campaigns", self.list_campaigns)
        route("GET", "/v1/offer-sources", self.list_offer_sources)
        route("POST", "/v1/postbacks/{postback_id}/replay", self.replay_postback)

    # -- middleware

    @web.middleware
    async def observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            self._metrics.observe(_route_of(request), request.method, status, time.perf_counter() - started)

    @web.middleware
    async def json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except _Reject as reject:
            return reject.response
        except Unavailable as exc:
            return error_response(503, str(exc), headers={"Retry-After": "1"})
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {name: exc.headers[name] for name in ("Allow", "WWW-Authenticate") if name in exc.headers}
            return error_response(exc.status, _http_error_message(exc, self._max_body_bytes), headers=headers)
        except Exception:
            # no request details: the path and query may carry ids, a secret or personal data
            log.exception("unexpected error answering %s %s", request.method, _route_of(request))
            return error_response(500, "internal error")

    # -- management

    def _authorize(self, request: web.Request) -> None:
        if check_bearer(request.headers.get("Authorization"), self._token) is not Verdict.ALLOWED:
            raise _Reject(
                error_response(
                    401,
                    "a valid bearer token is required (Authorization: Bearer <API_TOKEN>)",
                    headers={"WWW-Authenticate": 'Bearer realm="postback-router"'},
                )
            )

    def _document_handler(
        self,
        method: Callable[[web.Request, _Documents, str], Awaitable[web.StreamResponse]],
        documents: _Documents,
    ) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            self._authorize(request)
            return await method(request, documents, request.match_info[documents.id_field])

        return handle

    async def put_document(self, request: web.Request, documents: _Documents, key: str) -> web.StreamResponse:
        if not _storable_id(key):
            raise _invalid(documents.what, [FieldError(documents.id_field, f"must be 1-{MAX_ID_LENGTH} characters")])
        body = await _json_body(request)
        if isinstance(body, dict):
            body.setdefault(documents.id_field, key)  # the path names the document; the body need not repeat it
            if body[documents.id_field] != key:
                raise _invalid(documents.what, [FieldError(documents.id_field, "must equal the id in the path")])
        value = orjson.dumps(body)
        try:
            documents.parse(key.encode("utf-8"), value)
        except InvalidInput as error:
            raise _invalid(
                documents.what, error.errors or [FieldError(error.field or "(body)", error.message)]
            ) from None
        await self._backend.write([Write(documents.table, key, body)])
        log.info("%s published", documents.what, extra=_ids(documents, key))
        return _json(body)

    async def get_document(self, request: web.Request, documents: _Documents, key: str) -> web.StreamResponse:
        document = await self._backend.read(documents.table, key) if _storable_id(key) else None
        if document is None:
            return error_response(404, f"no {documents.what} under this id")
        return _json(document)

    async def delete_document(self, request: web.Request, documents: _Documents, key: str) -> web.StreamResponse:
        if not _storable_id(key) or await self._backend.read(documents.table, key) is None:
            return error_response(404, f"no {documents.what} under this id")
        await self._backend.write([Write(documents.table, key, None)])
        log.info("%s deleted", documents.what, extra=_ids(documents, key))
        return web.Response(status=204)

    async def update_conversion(self, request: web.Request) -> web.StreamResponse:
        self._authorize(request)
        conversion_id = request.match_info["conversion_id"]
        body = await _json_body(request)
        indexed = await self._backend.read("conversion_index", conversion_id) if _storable_id(conversion_id) else None
        if indexed is None:
            return error_response(
                404, "conversion not taken in through this api; publish updates to the conversions topic"
            )
        try:
            event = updated_conversion(indexed, body, self._max_conversion_bytes)
        except InvalidInput as error:
            raise _invalid("conversion update", error.errors) from None
        await self._backend.write(
            [
                Write("conversions", conversion_key(event), event),
                Write("conversion_index", conversion_id, index_entry(event)),
            ]
        )
        log.info("conversion updated", extra={"conversion_id": conversion_id})
        return _json(event, 202)

    async def conversion_trace(self, request: web.Request) -> web.StreamResponse:
        """What the service did with one conversion, from the trace index (docs/trace.md)."""
        self._authorize(request)
        if self._traces is None:
            raise Unavailable("the trace index is not running in this process")
        conversion_id = request.match_info["conversion_id"]
        trace = self._traces.lookup(conversion_id) if _storable_id(conversion_id) else None
        if trace is None:
            return error_response(404, "no trace of this conversion (unknown, or older than TRACE_RETENTION)")
        return _json(trace)

    async def replay_postback(self, request: web.Request) -> web.StreamResponse:
        """Send again a postback that ended rejected or dead_lettered (postback_router/api/replay_route.py)."""
        self._authorize(request)
        postback_id = request.match_info["postback_id"]
        answer = await replay_postback(self._replays, postback_id)
        if answer.body is None:
            return error_response(answer.status, answer.message)
        log.info("replay requested", extra={"postback_id": postback_id})
        return _json(answer.body, answer.status)

    # -- intake

    async def postback(self, request: web.Request) -> web.StreamResponse:
        try:
            fields, mistakes = await _postback_fields(request)
        except (_Reject, web.HTTPRequestEntityTooLarge):  # not a form, unreadable, too large
            self._metrics.count_intake("invalid")
            raise
        verdict = check_intake_secret(request.headers, fields, self._intake_secret)
        if verdict is not Verdict.ALLOWED:
            self._metrics.count_intake("unauthorized")
            if verdict is Verdict.MISSING:
                return error_response(401, "the intake secret is required (X-Postback-Secret header or secret field)")
            return error_response(403, "wrong intake secret")
        if mistakes:  # text that is not UTF-8, a field given twice: answered once the caller is known
            self._metrics.count_intake("invalid")
            return _refusal(PostbackRefused(mistakes))
        try:
            status_maps = await self._status_maps(fields)
        except Unavailable:
            self._metrics.count_intake("unavailable")
            raise
        try:
            event = conversion_from_postback(fields, self._clock(), self._max_conversion_bytes, status_maps)
        except PostbackRefused as refused:
            self._metrics.count_intake("unfilled_macro" if refused.reason == "unfilled_macro" else "invalid")
            return _refusal(refused)
        conversion_id: str = event["conversion_id"]
        try:
            # A repeat keeps the conversion's first occurred_at. The index read catches up with the
            # topic's end, so it sees a first call acknowledged through any replica; the lock makes
            # a repeat that arrives here while the first is still being written wait for it.
            async with self._intake_locks.hold(conversion_id):
                known = await self._backend.read("conversion_index", conversion_id)
                event = keep_first_occurred_at(event, known)
                await self._backend.write(
                    [
                        # keyed by click_id when it has no campaign: it must land on its click's partition
                        Write("conversions", conversion_key(event), event),
                        Write("conversion_index", conversion_id, index_entry(event)),
                    ]
                )
        except Unavailable:
            self._metrics.count_intake("unavailable")
            raise
        self._metrics.count_intake("accepted")
        log.info("conversion taken in", extra={"conversion_id": conversion_id, "campaign_id": event.get("campaign_id")})
        return _json({"status": "accepted", "conversion_id": conversion_id})

    async def _status_maps(self, fields: Mapping[str, str]) -> tuple[Mapping[str, str], ...]:
        """The status maps of a postback: its offer source's (when it names one the api knows), then
        the default. The offer source is read only for a status that is not canonical: the read
        catches up with the topic, which most calls need not wait for."""
        status, offer_source_id = fields.get("status") or "", fields.get("offer_source_id") or ""
        if not status or fold(status.strip()) in STATUSES or not _storable_id(offer_source_id):
            return (self._status_map,)
        document = await self._backend.read("offer_sources", offer_source_id)
        if document is None:
            return (self._status_map,)
        return (folded(document.get("status_map") or {}), self._status_map)

    # -- rule test and lists

    async def test_rules(self, request: web.Request) -> web.StreamResponse:
        """A sample conversion through the workers' evaluation; reads only, writes nothing."""
        self._authorize(request)
        campaign_id = request.match_info["campaign_id"]
        if not _storable_id(campaign_id):
            raise _invalid("rule test", [FieldError("campaign_id", f"must be 1-{MAX_ID_LENGTH} characters")])
        body = await _json_body(request)
        try:
            asked = read_rule_test(body, campaign_id, self._max_conversion_bytes, self._clock())
        except RuleTestRefused as refused:
            raise _invalid("rule test", refused.errors) from None
        rules, rules_source = asked.rules, "request"
        if rules is None:
            saved = await self._backend.read("campaign_rules", campaign_id)
            if saved is None:
                return error_response(404, "no campaign rules under this id; send `rules` to test unsaved ones")
            rules, rules_source = parse_campaign_rules(campaign_id.encode("utf-8"), orjson.dumps(saved)), "saved"
        conversion = asked.conversion
        offer_source: OfferSource | None = None
        if conversion.offer_source_id and _storable_id(conversion.offer_source_id):
            # the api's view of offer-sources, which holds what the workers' view holds
            document = await self._backend.read("offer_sources", conversion.offer_source_id)
            if document is not None:
                offer_source = parse_offer_source(conversion.offer_source_id.encode("utf-8"), orjson.dumps(document))
        explanation = explain_conversion(conversion, rules, offer_source, self._default_status)
        log.info("rules tested", extra={"campaign_id": campaign_id, "rules_source": rules_source})
        return _json(rule_test_answer(campaign_id, conversion, explanation, rules_source))

    async def list_campaigns(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "campaign_rules", campaign_item)

    async def list_offer_sources(self, request: web.Request) -> web.StreamResponse:
        return await self._list(request, "offer_sources", offer_source_item)

    async def _list(
        self, request: web.Request, table: ListedTable, item: Callable[[Listed], dict[str, Any]]
    ) -> web.StreamResponse:
        self._authorize(request)
        query, errors = parse_list_query(request.query)
        if query is None:
            raise _invalid("list query", errors)
        # one more than asked: whether it comes says if there is a next page
        listed = await self._backend.scan(table, query.prefix, query.after, query.limit + 1)
        return _json(list_answer(listed, query.limit, item))

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._openapi, content_type="application/json")


async def _postback_fields(request: web.Request) -> tuple[dict[str, str], list[RefusedField]]:
    """The fields intake reads, from the query string and the form together, and what is wrong
    with them (`read_fields`): text that is not UTF-8 (never replaced with U+FFFD, as aiohttp's own
    request.query and request.post() do), a field given more than once."""
    raw_query = request.rel_url.raw_query_string.encode("utf-8", "surrogateescape")
    query = (split_urlencoded(raw_query), "utf-8")
    if request.method != "POST":
        return read_fields(query)
    if request.content_type not in FORM_TYPES:
        if request.can_read_body and await request.content.read(1):
            raise _Reject(
                error_response(415, "send the fields as a query string or a form (application/x-www-form-urlencoded)")
            )
        return read_fields(query)
    if request.content_type == "multipart/form-data":
        return await _with_multipart_fields(request, query)
    charset = request.charset or "utf-8"
    if not known_charset(charset):
        raise _Reject(error_response(415, "the form's charset is unknown: send it in UTF-8"))
    body = await request.read()  # bounded by API_MAX_BODY_BYTES, as request.post() is
    return read_fields(query, (split_urlencoded(body.rstrip()), charset))


async def _with_multipart_fields(
    request: web.Request, query: tuple[list[tuple[bytes, bytes]], str]
) -> tuple[dict[str, str], list[RefusedField]]:
    try:
        form = await request.post()
    except UnicodeDecodeError:
        # A text part that is not text in its charset; aiohttp does not say which, nor what the rest
        # of the form holds (its secret among them), so this is answered before the secret is checked.
        refused = PostbackRefused([RefusedField("(body)", "a form part is not text in its charset", "not_utf8")])
        raise _Reject(_refusal(refused)) from None
    except (ValueError, LookupError, HttpProcessingError):  # a malformed multipart part, an unknown charset
        raise _Reject(error_response(400, "the form cannot be read")) from None
    # file parts (and parts of a non-text type) are not postback fields; aiohttp decoded the text
    # parts strictly, so encoding them back is lossless (and finds a surrogate, were there one)
    parts = [
        (name.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass"))
        for name, value in form.items()
        if isinstance(value, str)
    ]
    return read_fields(query, (parts, "utf-8"))


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        # orjson refuses invalid UTF-8 and lone surrogate escapes ("\ud800"): nothing becomes U+FFFD
        if "surrogate" in str(error) or not _utf8(raw):
            raise _Reject(
                error_response(
                    400,
                    "the body is not UTF-8 JSON",
                    [FieldError("(body)", "must be UTF-8, without lone surrogates (such as \\ud800)")],
                    reason="not_utf8",
                )
            ) from None
        raise _Reject(
            error_response(
                400, "the body is not JSON (UTF-8)", [FieldError("(body)", "must be JSON")], reason="not_json"
            )
        ) from None


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _storable_id(key: str) -> bool:
    """Ids the topics can hold: 1-256 characters that encode as UTF-8 (a path may decode otherwise)."""
    if not 0 < len(key) <= MAX_ID_LENGTH:
        return False
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(what: str, fields: list[FieldError]) -> _Reject:
    return _Reject(error_response(400, f"invalid {what}", fields))


def _ids(documents: _Documents, key: str) -> dict[str, str]:
    return {"campaign_id": key} if documents.table == "campaign_rules" else {}


def _route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


def _http_error_message(exc: web.HTTPException, max_body_bytes: int) -> str:
    if exc.status == 413:
        return f"the request body is larger than {max_body_bytes} bytes"
    if exc.status == 404:
        return "no such route (see /openapi.json)"
    if exc.status == 405:
        return "method not allowed on this route (see /openapi.json)"
    return exc.reason.lower()


def build_app(
    settings: Settings,
    backend: Backend,
    registry: CollectorRegistry,
    readiness: Readiness,
    clock: Callable[[], datetime] = utc_now,
    traces: TraceLookup | None = None,
    replays: PostbackReplays | None = None,
) -> web.Application:
    """The application: the api's routes, /openapi.json and the operations routes, all on one port.

    `clock` gives the time a postback is taken in (tests move it); `traces` answers
    GET /v1/conversions/{id} (None: 503); `replays` finds postbacks and writes replay requests for
    POST /v1/postbacks/{id}/replay (None: through Kafka)."""
    api = Api(settings, backend, ApiMetrics(registry), clock, traces, replays)
    app = web.Application(client_max_size=settings.api_max_body_bytes, middlewares=[api.observe, api.json_errors])
    api.add_routes(app)
    add_docs_routes(app)
    add_ops_routes(app, registry, readiness)
    return app
