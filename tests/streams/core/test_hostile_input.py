"""Hostile records on every input the worker reads: each is a refusal with a bounded reason, never an
exception, a hang or an accepted record (issue 8, security tests)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from schemas.errors import InvalidInput
from streams.core.conversion import parse_conversion
from streams.core.offer_sources import parse_offer_source
from streams.core.rules import parse_campaign_rules
from tests import factories as f

PARSERS: dict[str, Callable[[bytes], Any]] = {
    "conversions": lambda value: parse_conversion(b"cv-1", value, 65_536),
    "campaign-rules": lambda value: parse_campaign_rules(b"camp-1", value),
    "offer-sources": lambda value: parse_offer_source(b"os-1", value),
}


def _nested(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


HOSTILE = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, id="arrays-100k-deep"),
    pytest.param(_nested(50_000), id="objects-50k-deep"),
    pytest.param(_nested(200), id="objects-200-deep-within-size"),
    pytest.param(b'{"payout": 1' + b"0" * 5000 + b"}", id="huge-number"),
    pytest.param(b'{"payout": 1e999999}', id="infinite-number"),
    pytest.param(b'{"payout": NaN}', id="nan"),
    pytest.param(b'{"a": "\\ud800"}', id="lone-surrogate-escape"),
    pytest.param(b"\x00" * 1000, id="nul-bytes"),
    pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
    pytest.param(b'{"a": 1, "a": 2}', id="duplicate-keys"),
    pytest.param(b"\r\n" * 1000, id="line-breaks"),
    pytest.param(b"{" * 40_000, id="unclosed"),
]


@pytest.mark.parametrize("topic", sorted(PARSERS))
@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_record_is_refused_with_a_reason(topic: str, value: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        PARSERS[topic](value)
    assert refused.value.reason in (
        "not_utf8",
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "invalid_value",
        "oversized",
        "key_mismatch",
        "invalid_rule",
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("subs", {"sub1": {"deep": [[[[[["x"]]]]]]}}, id="nested-sub"),
        pytest.param("payout", "9" * 40, id="payout-beyond-18-digits"),
        pytest.param("click_id", "x" * 100_000, id="oversized-click-id"),
        pytest.param("user", {"email": ["a@b.co"] * 10_000}, id="oversized-user"),
    ],
)
def test_a_conversion_with_a_hostile_field_is_refused_and_the_batch_goes_on(field: str, value: Any) -> None:
    processor = f.processor(f.compiled("camp-1", f.s2s_entry()))
    records = [
        f.source_record(f.conversion("bad", **{field: value}), offset=0),
        f.source_record(f.conversion("good"), offset=1),
    ]
    result = processor.process(records)
    topics = [m.topic for m in result.messages]
    assert topics.count("conversions.invalid") == 1
    assert "postbacks.s2s" in topics  # the record after it still fired
    assert sum(result.invalid.values()) == 1
    assert all(len(m.value) < 256 * 1024 for m in result.messages)


def test_a_crlf_in_a_macro_value_cannot_reach_the_request_line() -> None:
    processor = f.processor(f.compiled("camp-1", f.s2s_entry()))
    event = f.conversion("cv-1", click_id="abc\r\nHost: evil.example\r\n\r\nGET /admin")
    [postback] = [
        orjson.loads(m.value)
        for m in processor.process([f.source_record(event)]).messages
        if m.topic == "postbacks.s2s"
    ]
    assert "\r" not in postback["url"] and "\n" not in postback["url"] and " " not in postback["url"]
    assert "abc%0D%0AHost%3A%20evil.example" in postback["url"]
