"""Properties of the pure stream core over generated input (hypothesis).

No input raises anything but a refusal; the matching rules hold for generated rules and conversions
against a reference model written here from the contract (§2), not from the code; URL templating
never lets a value escape its place; no generated personal data survives a `.invalid` record, and
every such record fits its size limit.
"""

from __future__ import annotations

import base64
import contextlib
import string
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import InvalidInput
from schemas.kinds import STATUSES
from streams.core.conversion import parse_conversion
from streams.core.invalid_records import invalid_record
from streams.core.rules import compile_campaign_rules, validate_campaign_rules
from streams.core.url_template import compile_url_template, render_postback_url
from tests import factories as f

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_leaf = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


# --- no input raises anything but a refusal -----------------------------------------------------------


@PROPERTY_SETTINGS
@given(key=st.none() | st.binary(max_size=40), value=st.none() | st.binary(max_size=300))
def test_any_bytes_are_a_conversion_or_a_refusal(key: bytes | None, value: bytes | None) -> None:
    try:
        parse_conversion(key, value, 65_536)
    except InvalidInput as refused:
        assert refused.reason
        assert value is None or len(value) < 8 or value.decode("utf-8", "replace") not in refused.message


@PROPERTY_SETTINGS
@given(fields=st.dictionaries(st.sampled_from(sorted(f.conversion())), json_values, max_size=8))
def test_any_json_fields_are_a_conversion_or_a_refusal(fields: dict[str, Any]) -> None:
    event = {**f.conversion(), **fields}
    with contextlib.suppress(InvalidInput, orjson.JSONEncodeError):
        parse_conversion(b"cv-1", orjson.dumps(event, option=orjson.OPT_NON_STR_KEYS), 65_536)


@PROPERTY_SETTINGS
@given(document=json_values)
def test_any_rules_document_is_valid_or_a_list_of_field_errors(document: Any) -> None:
    errors = validate_campaign_rules(document)
    assert all(error.field and error.message for error in errors)
    if not errors:
        compile_campaign_rules(document)


# --- matching against a reference model (contract §2) ---------------------------------------------------

TYPES = ("conversion", "lead", "deposit", "Deposit")
payouts = st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def entries(draw: st.DrawFn, index: int) -> dict[str, Any]:
    entry: dict[str, Any] = f.s2s_entry(f"e{index}")
    if draw(st.booleans()):
        entry["enabled"] = draw(st.booleans())
    if draw(st.booleans()):
        entry["payout_percent"] = draw(st.sampled_from([50, 100, 150, "12.5"]))
    if draw(st.booleans()):
        conditions: dict[str, Any] = {}
        if draw(st.booleans()):
            conditions["types"] = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()):
            conditions["statuses"] = draw(st.lists(st.sampled_from(STATUSES), min_size=1, max_size=3, unique=True))
        if draw(st.booleans()) or not conditions:
            conditions["min_payout"] = str(draw(payouts))
        entry["conditional"] = {"enabled": draw(st.booleans()), **conditions}
    return entry


@st.composite
def campaigns(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [draw(entries(i)) for i in range(draw(st.integers(1, 4)))]


def reference_fires(entry: dict[str, Any], conversion_type: str, status: str, payout: Decimal) -> bool:
    """Contract §2.1-2.4, written from the contract."""
    if entry.get("enabled") is False:
        return False
    conditional = entry.get("conditional") or {}
    if not conditional.get("enabled"):
        return True
    if "types" in conditional and conversion_type not in conditional["types"]:
        return False
    if "statuses" in conditional and status not in conditional["statuses"]:
        return False
    return not ("min_payout" in conditional and payout < Decimal(conditional["min_payout"]))


@PROPERTY_SETTINGS
@given(
    rules=campaigns(),
    conversion_type=st.sampled_from(TYPES),
    status=st.none() | st.sampled_from(STATUSES),
    offer_default=st.none() | st.sampled_from(STATUSES),
    payout=payouts,
)
def test_what_fires_is_what_the_contract_says_and_a_redelivery_fires_nothing(
    rules: list[dict[str, Any]], conversion_type: str, status: str | None, offer_default: str | None, payout: Decimal
) -> None:
    fields: dict[str, Any] = {"type": conversion_type, "payout": str(payout), "offer_source_id": "os-1"}
    fields["status"] = status if status is not None else ...
    event = f.conversion("cv-1", **fields)
    effective = status or offer_default or "approved"
    offer_sources = {"os-1": offer_default} if offer_default else {}
    processor = f.processor(f.compiled("camp-1", *rules), offer_sources=offer_sources)
    first = processor.process([f.source_record(event)])
    postbacks = [orjson.loads(m.value) for m in first.messages if m.topic.startswith("postbacks.")]
    fired = {postback["entry_id"]: postback for postback in postbacks}
    expected = {e["id"] for e in rules if reference_fires(e, conversion_type, effective, payout)}
    assert set(fired) == expected
    for entry in rules:
        if entry["id"] in fired:
            sent = Decimal(fired[entry["id"]]["payout"])
            assert sent == payout * Decimal(str(entry.get("payout_percent", 100))) / 100
            assert fired[entry["id"]]["status"] == effective
    # the fired-state as the worker applies it after the acknowledgements: an identical event fires nothing
    state = f.InMemoryFiredState()
    processor = f.processor(f.compiled("camp-1", *rules), offer_sources=offer_sources, fired_state=state)
    state.apply(processor.process([f.source_record(event)]).fired_updates)
    again = processor.process([f.source_record(event, offset=1)])
    assert [m for m in again.messages if m.topic.startswith("postbacks.")] == []


# --- URL templating -------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(clickid=st.text(max_size=40), sub1=st.text(max_size=40))
def test_a_macro_value_stays_in_its_query_parameter(clickid: str, sub1: str) -> None:
    template = compile_url_template("https://tracker.example/pb?cid={clickid}&s={sub1}&fixed=1")
    url = render_postback_url(template, {"clickid": clickid, "sub1": sub1})
    split = urlsplit(url)
    assert (split.scheme, split.hostname, split.path) == ("https", "tracker.example", "/pb")
    assert not any(ch in url for ch in "\r\n \t#")
    params = [part.split("=", 1) for part in split.query.split("&")]
    assert [name for name, _ in params] == ["cid", "s", "fixed"]
    assert [unquote(value, errors="surrogatepass") for _, value in params] == [clickid, sub1, "1"]


# --- personal data and size of `.invalid` records -------------------------------------------------------

local_parts = st.text(string.ascii_letters + string.digits + "._+-", min_size=1, max_size=20).filter(
    lambda s: s[0].isalnum() and s[-1].isalnum()
)
domains = st.lists(st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10), min_size=1, max_size=3)
emails = st.builds(
    lambda local, labels, tld: f"{local}@{'.'.join(labels)}.{tld}",
    local_parts,
    domains,
    st.sampled_from(["com", "org", "example", "co"]),
)
# Unspecified and loopback addresses (0.x, 127.x) are nobody's: they are kept (schemas/redaction.py).
ipv4s = st.tuples(st.integers(1, 255).filter(lambda first: first != 127), *[st.integers(0, 255)] * 3).map(
    lambda octets: ".".join(map(str, octets))
)
phones = st.builds(
    lambda cc, number, sep: f"+{cc}{sep}{number[:3]}{sep}{number[3:6]}{sep}{number[6:]}",
    st.integers(1, 99),
    st.text("0123456789", min_size=7, max_size=10),
    st.sampled_from([" ", "-", "."]),
)
SOURCE = {"topic": "conversions", "partition": 0, "offset": 0}
noise = st.text(string.ascii_letters + " ,;=&", max_size=30)


@PROPERTY_SETTINGS
@given(secret=emails | ipv4s | phones, before=noise, after=noise, as_binary=st.booleans())
def test_no_generated_personal_data_survives_an_invalid_record(
    secret: str, before: str, after: str, as_binary: bool
) -> None:
    value = f"{before} {secret} {after}".encode()
    if as_binary:
        value = b"\xff" + value
    body = invalid_record(
        InvalidInput("not_json", "not JSON"), b"k", value, {"topic": "t", "partition": 0, "offset": 0}, "now"
    )
    written = orjson.dumps(body)
    kept = base64.b64decode(body["value"]) if body["value_encoding"] == "base64" else body["value"].encode()
    assert secret.encode() not in kept
    assert secret.encode() not in written


@PROPERTY_SETTINGS
@given(value=st.binary(max_size=2000).map(lambda b: b * 400), key=st.binary(max_size=3000))
def test_an_invalid_record_always_fits_its_size_limit(value: bytes, key: bytes) -> None:
    body = invalid_record(
        InvalidInput("oversized", "too big"), key, value, {"topic": "t", "partition": 0, "offset": 0}, "now"
    )
    assert len(orjson.dumps(body)) < 256 * 1024
    assert f.schema_errors("invalid-record", {**body, "rejected_at": f.OCCURRED_AT}) == []
