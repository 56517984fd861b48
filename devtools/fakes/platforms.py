"""Fake ad-platform servers on loopback that check requests the way docs/destinations.md says the
real APIs do, answer in the real error shapes, and can be told to fail.

Every fake: `base_url = await fake.start()`, `await fake.stop()` (or `async with fake:`), `.received`
(every request, parsed), `.delivered` (the dedup key of each row accepted for the first time, so
"each postback received exactly once" is `Counter(fake.delivered)`), `.duplicates` (rows the
platform recognised again), and `.fail_next(n, mode, ...)` to script the next answers:

- `rate_limit`: the platform's throttling answer, with `Retry-After` when `retry_after` is set;
- `server_error` / `unavailable`: 500 / 503 with the platform's transient error;
- `timeout`: no answer until `stop()` (at most TIMEOUT_HOLD_SECONDS); the client's timeout fires;
- `invalid_token`: the platform's expired / invalid token answer;
- `partial`: the given rows fail with the given codes (Google and Microsoft per row; Meta and
  TikTok refuse the whole request, as they do).

Error code names marked "unconfirmed" below are placeholders in the real shape; the classifiers
must not depend on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from dispatchers.platforms.api_versions import DEFAULT_VERSIONS, SUNSETS

FailureMode = Literal["rate_limit", "server_error", "unavailable", "timeout", "invalid_token", "partial"]
Clock = Callable[[], datetime]

# Longer than any client timeout a test sets, short enough that a forgotten stop() cannot hang CI.
TIMEOUT_HOLD_SECONDS = 30.0
# Big batches (2001 Google rows with identifiers) exceed aiohttp's 1 MiB default body limit.
MAX_BODY_BYTES = 32 * 1024 * 1024
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
GOOGLE_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")
GOOGLE_CONVERSION_ACTION = re.compile(r"^customers/(\d+)/conversionActions/\d+$")
MICROSOFT_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
META_ACTION_SOURCES = frozenset(
    {
        "website",
        "app",
        "phone_call",
        "chat",
        "email",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Failure:
    mode: FailureMode
    retry_after: str | None = None
    rows: Mapping[int, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any  # parsed JSON, a form dict, or None when the body was neither


class FakeServer:
    """Lifecycle, request log and failure script shared by every fake."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or utc_now
        self.received: list[ReceivedRequest] = []
        self.delivered: list[str] = []
        self.duplicates: list[str] = []
        self.base_url = ""
        self._script: deque[Failure] = deque()
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        # added before start(): e.g. devtools.chaos scripting failures around every request
        self.middlewares: list[Middleware] = []

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    async def start(self) -> str:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=self.middlewares)
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        self._stopping.set()  # releases handlers held by `timeout`
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def fail_next(
        self,
        n: int = 1,
        mode: FailureMode = "server_error",
        *,
        retry_after: str | None = None,
        rows: Mapping[int, str] | None = None,
    ) -> None:
        """Answer the next `n` requests with `mode` instead of processing them normally."""
        for _ in range(n):
            self._script.append(Failure(mode, retry_after, dict(rows or {})))

    def _next_failure(self) -> Failure | None:
        return self._script.popleft() if self._script else None

    async def _hold(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), TIMEOUT_HOLD_SECONDS)

    async def _record(self, request: web.Request) -> ReceivedRequest:
        raw = await request.read()
        body: Any = None
        if request.content_type == "application/x-www-form-urlencoded":
            body = dict(parse_qsl(raw.decode("utf-8", errors="replace")))
        else:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        received = ReceivedRequest(request.method, request.path, dict(request.query), dict(request.headers), body)
        self.received.append(received)
        return received


def _retry_after_headers(failure: Failure) -> dict[str, str]:
    return {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[len("Bearer ") :] if header.startswith("Bearer ") else None


# --- Google Ads -------------------------------------------------------------------------------


def _google_error(code: Mapping[str, str], message: str, index: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"errorCode": dict(code), "message": message}
    if index is not None:
        error["location"] = {"fieldPathElements": [{"fieldName": "conversions", "index": index}]}
    return error


# The API version of the request being answered: Google names it in every GoogleAdsFailure's @type.
_google_version: contextvars.ContextVar[str] = contextvars.ContextVar(
    "google_version", default=DEFAULT_VERSIONS["google_ads"]
)
# The sunset dates Google has published (exact ones only; projected months are not announcements).
GOOGLE_SUNSETS: Mapping[str, date] = {
    version: sunset.day for version, sunset in SUNSETS["google_ads"].items() if not sunset.projected
}


def _google_failure(errors: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "@type": f"type.googleapis.com/google.ads.googleads.{_google_version.get()}.errors.GoogleAdsFailure",
        "errors": errors,
        "requestId": uuid.uuid4().hex[:22],
    }


def _google_status(status: int, grpc: str, message: str, errors: list[dict[str, Any]], **headers: str) -> web.Response:
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc}
    if errors:
        error["details"] = [_google_failure(errors)]
    return web.json_response({"error": error}, status=status, headers=headers)


class FakeGoogleAds(FakeServer):
    """UploadClickConversions. Dedup key in `.delivered`: the orderId.

    Any `v<N>` path is served, except a version whose sunset date (`sunsets`, default Google's published
    ones) is on or before the fake's clock: that is refused as Google does, HTTP 400 INVALID_ARGUMENT
    with `requestError: UNSUPPORTED_VERSION`, before credentials are looked at.
    """

    def __init__(
        self,
        *,
        access_token: str = "google-access-token",
        developer_token: str = "google-developer-token",
        login_customer_id: str | None = None,
        sunsets: Mapping[str, date] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(clock)
        self.tokens: set[str] = {access_token}
        self.developer_token = developer_token
        self.login_customer_id = login_customer_id
        self.sunsets: Mapping[str, date] = GOOGLE_SUNSETS if sunsets is None else sunsets
        self.conversions: list[dict[str, Any]] = []
        self._order_ids: set[str] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{version}/customers/{target}", self._handle)]

    async def _handle(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        version = request.match_info["version"]
        _google_version.set(version)  # this request's task only: answers name its version
        failure = self._next_failure()
        if failure is not None and failure.mode != "partial":
            return await self._scripted(failure)
        customer = re.fullmatch(r"(\d+):uploadClickConversions", request.match_info["target"])
        if not re.fullmatch(r"v\d+", version) or customer is None:
            return web.json_response({"error": {"code": 404, "status": "NOT_FOUND"}}, status=404)
        sunset = self.sunsets.get(version)
        if sunset is not None and sunset <= self.clock().date():
            error = _google_error(
                {"requestError": "UNSUPPORTED_VERSION"},
                f"Version {version} is deprecated. Requests to this version will be blocked.",
            )
            return _google_status(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", [error])
        refused = self._check_headers(request)
        if refused is not None:
            return refused
        body = received.body
        if not isinstance(body, dict) or not isinstance(body.get("conversions"), list) or not body["conversions"]:
            code = {"requestError": "REQUIRED_FIELD_MISSING"}  # unconfirmed
            return _google_status(400, "INVALID_ARGUMENT", "conversions required", [_google_error(code, "")])
        if body.get("partialFailure") is not True:
            code = {"requestError": "INVALID_INPUT"}  # unconfirmed
            return _google_status(400, "INVALID_ARGUMENT", "partialFailure must be true", [_google_error(code, "")])
        rows: list[Any] = body["conversions"]
        if len(rows) > 2000:
            code = {"conversionUploadError": "TOO_MANY_CONVERSIONS_IN_REQUEST"}
            error = _google_error(code, "Upload fewer than 2001 events in a single request.")
            return _google_status(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", [error])
        return self._upload(customer.group(1), rows, failure.rows if failure else {})

    def _check_headers(self, request: web.Request) -> web.Response | None:
        token = _bearer(request)
        if token is None:
            return _google_status(401, "UNAUTHENTICATED", "Request is missing required authentication credential.", [])
        if token not in self.tokens:
            error = _google_error({"authenticationError": "OAUTH_TOKEN_INVALID"}, "Oauth token is invalid.")
            return _google_status(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", [error])
        developer_token = request.headers.get("developer-token")
        if developer_token != self.developer_token:
            name = "DEVELOPER_TOKEN_PARAMETER_MISSING" if developer_token is None else "DEVELOPER_TOKEN_INVALID"
            error = _google_error({"authenticationError": name}, "The developer token is not valid.")
            return _google_status(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", [error])
        if self.login_customer_id is not None and request.headers.get("login-customer-id") != self.login_customer_id:
            error = _google_error({"authorizationError": "USER_PERMISSION_DENIED"}, "User doesn't have permission.")
            return _google_status(403, "PERMISSION_DENIED", "The caller does not have permission", [error])
        return None

    def _upload(self, customer_id: str, rows: list[Any], scripted: Mapping[int, str]) -> web.Response:
        order_counts: dict[str, int] = {}
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("orderId"), str):
                order_counts[row["orderId"]] = order_counts.get(row["orderId"], 0) + 1
        errors: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            if index in scripted:
                code: dict[str, str] | None = {"conversionUploadError": scripted[index]}
                message = "scripted failure"
            else:
                code, message = self._row_problem(customer_id, row, order_counts)
            if code is not None:
                errors.append(_google_error(code, message, index))
                results.append({})
                continue
            order_id = row.get("orderId") or f"{row.get('gclid')}|{row['conversionDateTime']}"
            self._order_ids.add(order_id)
            self.delivered.append(order_id)
            self.conversions.append(row)
            results.append({k: row[k] for k in ("gclid", "conversionAction", "conversionDateTime") if k in row})
        answer: dict[str, Any] = {"results": results}
        if errors:
            answer["partialFailureError"] = {
                "code": 3,
                "message": f"{len(errors)} conversion(s) failed",
                "details": [_google_failure(errors)],
            }
        return web.json_response(answer)

    def _row_problem(
        self, customer_id: str, row: Any, order_counts: Mapping[str, int]
    ) -> tuple[dict[str, str] | None, str]:
        if not isinstance(row, dict):
            return {"requestError": "INVALID_INPUT"}, "conversion must be an object"
        action = GOOGLE_CONVERSION_ACTION.match(str(row.get("conversionAction", "")))
        if action is None or action.group(1) != customer_id:
            return {"conversionUploadError": "NO_CONVERSION_ACTION_FOUND"}, "conversion action not found"
        if not GOOGLE_DATE_TIME.match(str(row.get("conversionDateTime", ""))):
            # unconfirmed code name
            return {"dateError": "INVALID_STRING_DATE_TIME_SECONDS_WITH_OFFSET"}, "bad conversionDateTime"
        if "conversionValue" in row and not is_number(row["conversionValue"]):
            return {"fieldError": "INVALID_VALUE"}, "conversionValue must be a number"
        if "currencyCode" in row and not CURRENCY.match(str(row["currencyCode"])):
            return {"fieldError": "INVALID_VALUE"}, "bad currencyCode"
        if row.get("gbraid") and row.get("wbraid"):
            return {"conversionUploadError": "GBRAID_WBRAID_BOTH_SET"}, "only one of gbraid, wbraid"
        identifiers = row.get("userIdentifiers", [])
        if not isinstance(identifiers, list) or not all(_google_identifier_ok(item) for item in identifiers):
            return {"conversionUploadError": "INVALID_USER_IDENTIFIER"}, "identifiers must be SHA-256 hex"
        if not any(row.get(name) for name in ("gclid", "gbraid", "wbraid")) and not identifiers:
            return {"fieldError": "REQUIRED"}, "a click id or user identifiers are required"
        order_id = row.get("orderId")
        if isinstance(order_id, str):
            if order_counts.get(order_id, 0) > 1:
                return {"conversionUploadError": "DUPLICATE_ORDER_ID"}, "order id repeated in request"
            if order_id in self._order_ids:
                self.duplicates.append(order_id)
                return {"conversionUploadError": "CLICK_CONVERSION_ALREADY_EXISTS"}, "conversion already exists"
        return None, ""

    async def _scripted(self, failure: Failure) -> web.Response:
        headers = _retry_after_headers(failure)
        if failure.mode == "timeout":
            await self._hold()
            return web.Response(status=504)
        if failure.mode == "rate_limit":
            error = _google_error({"quotaError": "RESOURCE_EXHAUSTED"}, "Too many requests.")
            return _google_status(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted.", [error], **headers)
        if failure.mode == "unavailable":
            error = _google_error({"internalError": "TRANSIENT_ERROR"}, "The service is temporarily unavailable.")
            return _google_status(503, "UNAVAILABLE", "The service is currently unavailable.", [error], **headers)
        if failure.mode == "invalid_token":
            error = _google_error({"authenticationError": "OAUTH_TOKEN_EXPIRED"}, "Oauth token is expired.")
            return _google_status(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", [error])
        error = _google_error({"internalError": "INTERNAL_ERROR"}, "An internal error has occurred.")
        return _google_status(500, "INTERNAL", "Internal error encountered.", [error], **headers)


def _google_identifier_ok(item: object) -> bool:
    if not isinstance(item, dict) or len(item) != 1:
        return False
    ((name, value),) = item.items()
    return name in ("hashedEmail", "hashedPhoneNumber") and isinstance(value, str) and bool(SHA256_HEX.match(value))


# --- Meta -------------------------------------------------------------------------------------


def _meta_error(status: int, code: int, message: str, *, subcode: int | None = None, **extra: Any) -> web.Response:
    headers = extra.pop("headers", {})
    error: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "AfakeTrace"}
    if subcode is not None:
        error["error_subcode"] = subcode
    error.update(extra)
    return web.json_response({"error": error}, status=status, headers=headers)


class FakeMeta(FakeServer):
    """Conversions API. Dedup key in `.delivered`: the event_id (Meta dedups on event_name + event_id)."""

    def __init__(self, *, access_token: str = "meta-access-token", clock: Clock | None = None) -> None:
        super().__init__(clock)
        self.tokens: set[str] = {access_token}
        self.events: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/{version}/{pixel_id}/events", self._handle)]

    async def _handle(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        failure = self._next_failure()
        if failure is not None and failure.mode != "partial":
            return await self._scripted(failure)
        body = received.body if isinstance(received.body, dict) else {}
        token = body.get("access_token") or request.query.get("access_token")
        if not token:
            return _meta_error(400, 104, "An access token is required to request this resource.")
        if token not in self.tokens:
            return _meta_error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        if not request.match_info["pixel_id"].isdigit():
            return _meta_error(400, 100, "Unsupported post request.", subcode=33)
        data = body.get("data")
        if not isinstance(data, list) or not data or len(data) > 1000:
            return _meta_error(400, 100, "Invalid parameter", error_user_msg="data must hold 1 to 1000 events")
        if failure is not None:
            index = min(failure.rows)
            return _meta_error(400, 100, "Invalid parameter", error_user_msg=f"event {index}: {failure.rows[index]}")
        oldest = (self.clock() - timedelta(days=7)).timestamp()
        for index, event in enumerate(data):
            problem = _meta_event_problem(event)
            if problem is not None:
                return _meta_error(400, 100, "Invalid parameter", error_user_msg=f"event {index}: {problem}")
            if event["event_time"] < oldest:
                # subcode unconfirmed; the whole request fails, as docs/destinations.md says.
                return _meta_error(
                    400,
                    100,
                    "Invalid parameter",
                    subcode=2804003,
                    error_user_title="Event Timestamp Too Old",
                    error_user_msg=f"event {index}: event_time is more than 7 days ago",
                )
        for event in data:
            key = (event["event_name"], event["event_id"])
            if key in self._seen:
                self.duplicates.append(event["event_id"])
                continue
            self._seen.add(key)
            self.delivered.append(event["event_id"])
            self.events.append(event)
        return web.json_response({"events_received": len(data), "messages": [], "fbtrace_id": "AfakeTrace"})

    async def _scripted(self, failure: Failure) -> web.Response:
        headers = _retry_after_headers(failure)
        if failure.mode == "timeout":
            await self._hold()
            return web.Response(status=504)
        if failure.mode == "rate_limit":
            return _meta_error(400, 17, "User request limit reached", is_transient=True, headers=headers)
        if failure.mode == "unavailable":
            return _meta_error(503, 2, "Service temporarily unavailable", is_transient=True, headers=headers)
        if failure.mode == "invalid_token":
            return _meta_error(400, 190, "Error validating access token: Session has expired", subcode=463)
        return _meta_error(500, 1, "An unknown error has occurred.", is_transient=False, headers=headers)


def _meta_event_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "must be an object"
    if not isinstance(event.get("event_name"), str) or not event["event_name"]:
        return "event_name is required"
    if not isinstance(event.get("event_time"), int) or isinstance(event.get("event_time"), bool):
        return "event_time must be unix seconds"
    if not isinstance(event.get("event_id"), str) or not event["event_id"]:
        return "event_id is required"
    source = event.get("action_source")
    if source not in META_ACTION_SOURCES:
        return "action_source is required"
    user = event.get("user_data")
    if not isinstance(user, dict) or not user:
        return "user_data is required"
    if source == "website" and not (user.get("client_user_agent") and event.get("event_source_url")):
        return "website events need client_user_agent and event_source_url"
    for name in ("em", "ph", "external_id"):
        values = user.get(name, [])
        if not isinstance(values, list) or not all(isinstance(v, str) and SHA256_HEX.match(v) for v in values):
            return f"user_data.{name} must be SHA-256 hex"
    custom = event.get("custom_data", {})
    if not isinstance(custom, dict):
        return "custom_data must be an object"
    if "value" in custom and not is_number(custom["value"]):
        return "custom_data.value must be a number"
    if "currency" in custom and not CURRENCY.match(str(custom["currency"])):
        return "custom_data.currency must be ISO 4217"
    return None


# --- TikTok -----------------------------------------------------------------------------------


def _tiktok(code: int, message: str, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    envelope = {"code": code, "message": message, "request_id": uuid.uuid4().hex, "data": {}}
    return web.json_response(envelope, status=status, headers=headers)


TIKTOK_BAD_PARAMETER = 40002  # unconfirmed
TIKTOK_INVALID_TOKEN = 40105  # unconfirmed
TIKTOK_RATE_LIMITED = 40100  # unconfirmed (docs/destinations.md)


class FakeTikTok(FakeServer):
    """Events API 2.0. Dedup key in `.delivered`: the event_id (TikTok dedups on event + event_id)."""

    def __init__(
        self, *, access_token: str = "tiktok-access-token", pixel_codes: Iterable[str] = (), clock: Clock | None = None
    ) -> None:
        super().__init__(clock)
        self.tokens: set[str] = {access_token}
        self.pixel_codes = frozenset(pixel_codes)  # empty: any pixel code
        self.events: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/open_api/v1.3/event/track/", self._handle)]

    async def _handle(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        failure = self._next_failure()
        if failure is not None and failure.mode != "partial":
            return await self._scripted(failure)
        if request.headers.get("Access-Token") not in self.tokens:
            return _tiktok(TIKTOK_INVALID_TOKEN, "Access token is incorrect or has been revoked.")
        body = received.body
        if not isinstance(body, dict) or body.get("event_source") != "web":
            return _tiktok(TIKTOK_BAD_PARAMETER, "event_source: must be web")
        source_id = body.get("event_source_id")
        if not isinstance(source_id, str) or (self.pixel_codes and source_id not in self.pixel_codes):
            return _tiktok(TIKTOK_BAD_PARAMETER, "event_source_id: unknown pixel code")
        data = body.get("data")
        if not isinstance(data, list) or not data or len(data) > 1000:
            return _tiktok(TIKTOK_BAD_PARAMETER, "data: must hold 1 to 1000 events")
        if failure is not None:
            index = min(failure.rows)
            return _tiktok(TIKTOK_BAD_PARAMETER, f"data[{index}]: {failure.rows[index]}")
        for index, event in enumerate(data):
            problem = _tiktok_event_problem(event)
            if problem is not None:
                return _tiktok(TIKTOK_BAD_PARAMETER, f"data[{index}].{problem}")
        for event in data:
            key = (event["event"], event["event_id"])
            if key in self._seen:
                self.duplicates.append(event["event_id"])
                continue
            self._seen.add(key)
            self.delivered.append(event["event_id"])
            self.events.append(event)
        return _tiktok(0, "OK")

    async def _scripted(self, failure: Failure) -> web.Response:
        headers = _retry_after_headers(failure)
        if failure.mode == "timeout":
            await self._hold()
            return web.Response(status=504)
        if failure.mode == "rate_limit":
            return _tiktok(TIKTOK_RATE_LIMITED, "Too many requests.", headers=headers)
        if failure.mode == "unavailable":
            return _tiktok(50002, "Service unavailable.", status=503, headers=headers)  # code unconfirmed
        if failure.mode == "invalid_token":
            return _tiktok(TIKTOK_INVALID_TOKEN, "Access token is incorrect or has been revoked.")
        return _tiktok(50000, "System error.", status=500, headers=headers)  # code unconfirmed


def _tiktok_event_problem(event: Any) -> str | None:
    if not isinstance(event, dict):
        return "must be an object"
    if not isinstance(event.get("event"), str) or not event["event"]:
        return "event: required"
    if not isinstance(event.get("event_time"), int) or isinstance(event.get("event_time"), bool):
        return "event_time: must be unix seconds"
    if not isinstance(event.get("event_id"), str) or not event["event_id"]:
        return "event_id: required"
    user = event.get("user", {})
    if not isinstance(user, dict):
        return "user: must be an object"
    for name in ("email", "phone", "external_id"):
        if name in user and not (isinstance(user[name], str) and SHA256_HEX.match(user[name])):
            return f"user.{name}: must be SHA-256 hex"
    properties = event.get("properties", {})
    if not isinstance(properties, dict):
        return "properties: must be an object"
    if "value" in properties and not is_number(properties["value"]):
        return "properties.value: must be a number"
    if "currency" in properties and not CURRENCY.match(str(properties["currency"])):
        return "properties.currency: must be ISO 4217"
    return None


# --- Microsoft Advertising ----------------------------------------------------------------------


def _ms_error(code: int, error_code: str, message: str, index: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"Code": code, "ErrorCode": error_code, "Message": message, "Details": None}
    if index is not None:
        error["Index"] = index
        error["Type"] = "BatchError"
    return error


def _ms_fault(status: int, errors: list[dict[str, Any]], headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"TrackingId": str(uuid.uuid4()), "Type": "ApiFaultDetail", "Errors": errors}
    return web.json_response(body, status=status, headers=headers)


# Row error names and numbers below are placeholders in the real shape (unconfirmed).
MS_ROW_ERRORS: Mapping[str, int] = {
    "OfflineConversionNameInvalid": 3701,
    "OfflineConversionTimeInvalid": 3702,
    "FutureConversionTimeCannotBeSet": 3703,
    "OfflineConversionTimeOutsideWindow": 3704,
    "OfflineConversionMicrosoftClickIdInvalid": 3705,
    "OfflineConversionValueInvalid": 3706,
    "OfflineConversionCurrencyCodeInvalid": 3707,
}


class FakeMicrosoftAds(FakeServer):
    """ApplyOfflineConversions. Dedup key in `.delivered`: `MicrosoftClickId|ConversionTime`.

    A ConversionName not in `goal_names` (when given) is accepted but lands in `.uncounted`, as
    Microsoft silently does not count it.
    """

    def __init__(
        self,
        *,
        access_token: str = "microsoft-access-token",
        developer_token: str = "microsoft-developer-token",
        customer_id: str | None = None,
        account_id: str | None = None,
        goal_names: Iterable[str] = (),
        clock: Clock | None = None,
    ) -> None:
        super().__init__(clock)
        self.tokens: set[str] = {access_token}
        self.developer_token = developer_token
        self.customer_id = customer_id
        self.account_id = account_id
        self.goal_names = frozenset(goal_names)
        self.conversions: list[dict[str, Any]] = []
        self.uncounted: list[dict[str, Any]] = []
        self._seen: set[str] = set()

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/CampaignManagement/v13/OfflineConversions/Apply", self._handle)]

    async def _handle(self, request: web.Request) -> web.Response:
        received = await self._record(request)
        failure = self._next_failure()
        if failure is not None and failure.mode != "partial":
            return await self._scripted(failure)
        if _bearer(request) not in self.tokens or request.headers.get("DeveloperToken") != self.developer_token:
            return _ms_fault(401, [_ms_error(105, "InvalidCredentials", "Authentication failed.")])
        customer_id = request.headers.get("CustomerId")
        account_id = request.headers.get("CustomerAccountId")
        if not customer_id:
            return _ms_fault(400, [_ms_error(1029, "CustomerIdHasToBeSpecified", "CustomerId header missing.")])
        if not account_id:
            return _ms_fault(400, [_ms_error(1030, "AccountIdHasToBeSpecified", "CustomerAccountId missing.")])
        if self.customer_id not in (None, customer_id) or self.account_id not in (None, account_id):
            return _ms_fault(400, [_ms_error(106, "UserIsNotAuthorized", "Not authorized for this account.")])
        body = received.body
        rows = body.get("OfflineConversions") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            return _ms_fault(400, [_ms_error(3700, "OfflineConversionsNullOrEmpty", "No conversions.")])  # unconfirmed
        if len(rows) > 1000:
            return _ms_fault(400, [_ms_error(3708, "OfflineConversionsLimitExceeded", "Over 1000.")])  # unconfirmed
        scripted = failure.rows if failure else {}
        errors: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            name = scripted.get(index) or self._row_problem(row)
            if name is not None:
                errors.append(_ms_error(MS_ROW_ERRORS.get(name, 3799), name, f"conversion {index}: {name}", index))
                continue
            key = f"{row['MicrosoftClickId']}|{row['ConversionTime']}"
            if key in self._seen:
                self.duplicates.append(key)
                continue
            self._seen.add(key)
            self.delivered.append(key)
            self.conversions.append(row)
            if self.goal_names and row["ConversionName"] not in self.goal_names:
                self.uncounted.append(row)
        return web.json_response({"PartialErrors": errors})

    def _row_problem(self, row: Any) -> str | None:
        if not isinstance(row, dict) or not isinstance(row.get("ConversionName"), str) or not row["ConversionName"]:
            return "OfflineConversionNameInvalid"
        if not isinstance(row.get("MicrosoftClickId"), str) or not row["MicrosoftClickId"]:
            return "OfflineConversionMicrosoftClickIdInvalid"
        text = row.get("ConversionTime")
        if not isinstance(text, str) or not MICROSOFT_TIME.match(text):
            return "OfflineConversionTimeInvalid"
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        now = self.clock()
        if moment > now:
            return "FutureConversionTimeCannotBeSet"
        if moment < now - timedelta(days=90):
            return "OfflineConversionTimeOutsideWindow"
        if "ConversionValue" in row and not is_number(row["ConversionValue"]):
            return "OfflineConversionValueInvalid"
        if "ConversionCurrencyCode" in row and not CURRENCY.match(str(row["ConversionCurrencyCode"])):
            return "OfflineConversionCurrencyCodeInvalid"
        return None

    async def _scripted(self, failure: Failure) -> web.Response:
        headers = _retry_after_headers(failure)
        if failure.mode == "timeout":
            await self._hold()
            return web.Response(status=504)
        if failure.mode == "rate_limit":
            return _ms_fault(429, [_ms_error(117, "CallRateExceeded", "Call rate exceeded.")], headers)
        if failure.mode == "invalid_token":
            return _ms_fault(401, [_ms_error(109, "AuthenticationTokenExpired", "The token has expired.")])
        status = 503 if failure.mode == "unavailable" else 500
        return _ms_fault(status, [_ms_error(0, "InternalError", "An internal error has occurred.")], headers)


# --- OAuth token endpoint (Google, Microsoft) -----------------------------------------------------


class FakeOAuthServer(FakeServer):
    """`POST /token` with grant_type=refresh_token, client_id, client_secret, refresh_token (form).

    Every token it issues is added to each set in `grant_into` (a platform fake's `.tokens`), so the
    platform fake accepts it; `revoke_previous` drops the token issued before, modelling expiry.
    """

    def __init__(
        self,
        *,
        client_id: str = "oauth-client-id",
        client_secret: str = "oauth-client-secret",
        refresh_token: str = "oauth-refresh-token",
        expires_in: int = 3600,
        grant_into: Iterable[set[str]] = (),
        revoke_previous: bool = False,
    ) -> None:
        super().__init__()
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_token = refresh_token
        self.expires_in = expires_in
        self.grant_into = list(grant_into)
        self.revoke_previous = revoke_previous
        self.calls = 0
        self.issued: list[str] = []

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/token", self._handle)]

    async def _handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        received = await self._record(request)
        failure = self._next_failure()
        if failure is not None:
            return await self._scripted(failure)
        form = received.body if isinstance(received.body, dict) else {}
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response(
                {"error": "invalid_request", "error_description": "form body required"}, status=400
            )
        if form.get("grant_type") != "refresh_token":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("refresh_token") != self.refresh_token:
            return web.json_response({"error": "invalid_grant", "error_description": "Bad Request"}, status=400)
        token = f"fake-access-{len(self.issued) + 1}-{uuid.uuid4().hex[:8]}"
        for tokens in self.grant_into:
            if self.revoke_previous and self.issued:
                tokens.discard(self.issued[-1])
            tokens.add(token)
        self.issued.append(token)
        return web.json_response({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    async def _scripted(self, failure: Failure) -> web.Response:
        headers = _retry_after_headers(failure)
        if failure.mode == "timeout":
            await self._hold()
            return web.Response(status=504)
        if failure.mode == "invalid_token":
            body = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            return web.json_response(body, status=400)
        status = {"rate_limit": 429, "unavailable": 503}.get(failure.mode, 500)
        return web.json_response({"error": "temporarily_unavailable"}, status=status, headers=headers)


# --- Sample postbacks -----------------------------------------------------------------------------

SAMPLE_ENTRIES: Mapping[str, Mapping[str, Any]] = {
    "google_ads": {
        "id": "google-main",
        "kind": "google_ads",
        "customer_id": "123-456-7890",
        "conversion_action": "customers/1234567890/conversionActions/987654",
        "credentials": "GOOGLE_MAIN",
    },
    "meta": {
        "id": "meta-main",
        "kind": "meta",
        "pixel_id": "1122334455",
        "credentials": "META_MAIN",
        "event_names": {"deposit": "Purchase"},
    },
    "tiktok": {
        "id": "tiktok-main",
        "kind": "tiktok",
        "pixel_code": "CPIXEL123",
        "credentials": "TIKTOK_MAIN",
        "event_names": {"deposit": "CompletePayment"},
    },
    "microsoft_ads": {
        "id": "ms-main",
        "kind": "microsoft_ads",
        "customer_id": "7001",
        "account_id": "8002",
        "conversion_name": "Deposit",
        "credentials": "MS_MAIN",
    },
}
SAMPLE_CLICK_IDS: Mapping[str, Mapping[str, str]] = {
    "google_ads": {"gclid": "EAIaIQobChMI-fake-gclid"},
    "meta": {"fbc": "fb.1.1700000000000.AbCdEf", "fbp": "fb.1.1700000000000.123456789"},
    "tiktok": {"ttclid": "E.C.P.fake-ttclid"},
    "microsoft_ads": {"msclkid": "0123456789abcdef0123456789ab"},
}
_EMAIL_HASH = hashlib.sha256(b"test@example.com").hexdigest()
_PHONE_HASH = hashlib.sha256(b"+15551234567").hexdigest()
_PHONE_DIGITS_HASH = hashlib.sha256(b"15551234567").hexdigest()
_EXTERNAL_ID_HASH = hashlib.sha256(b"user-42").hexdigest()
_POSTBACK_NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


def sample_postback(kind: str, occurred_at: datetime, *, seq: int = 0, **overrides: Any) -> dict[str, Any]:
    """A matched postback as schemas/matched-postback.schema.json describes it, for `kind`."""
    occurred = occurred_at.astimezone(UTC)
    stamp = occurred.strftime("%Y-%m-%dT%H:%M:%SZ")
    conversion_id = f"conv-{seq}"
    entry = dict(SAMPLE_ENTRIES[kind])
    user: dict[str, str] = {
        "email_sha256": _EMAIL_HASH,
        "phone_sha256": _PHONE_HASH,
        "phone_digits_sha256": _PHONE_DIGITS_HASH,
        "external_id_sha256": _EXTERNAL_ID_HASH,
    }
    if kind in ("meta", "tiktok"):
        user.update(ip="203.0.113.7", user_agent="Mozilla/5.0 (fake)")
    postback: dict[str, Any] = {
        "schema_version": 1,
        "postback_id": str(uuid.uuid5(_POSTBACK_NAMESPACE, f"{conversion_id}|{entry['id']}")),
        "kind": kind,
        "destination_id": f"{kind}:fake",
        "entry_id": entry["id"],
        "campaign_id": "camp-1",
        "conversion_id": conversion_id,
        "click_id": f"click-{seq}",
        "type": "deposit",
        "status": "approved",
        "status_source": "event",
        "payout": "12.5",
        "conversion_payout": "12.5",
        "currency": "USD",
        "transaction_id": None,
        "occurred_at": stamp,
        "occurred_at_unix": int(occurred.timestamp()),
        "received_at": None,
        "matched_at": stamp,
        "entry": entry,
        # One click per conversion: Microsoft ignores a second conversion with the same click and time.
        "click_ids": {name: f"{value}{seq:04d}" for name, value in SAMPLE_CLICK_IDS[kind].items()},
        "user": user,
        "subs": {},
        "source": {"topic": f"postbacks.{kind}", "partition": 0, "offset": seq},
    }
    postback.update(overrides)
    return postback
