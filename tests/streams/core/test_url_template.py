"""contract §3, S2S URL macros: checked when a rule is published, percent-encoded when rendered."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import pytest

from schemas.errors import InvalidInput
from streams.core.conversion import Conversion, parse_conversion
from streams.core.messages import s2s_macro_values
from streams.core.rules import parse_campaign_rules, validate_campaign_rules
from streams.core.url_template import (
    FIXED_MACROS,
    TemplateError,
    compile_url_template,
    is_known_macro,
    render_postback_url,
)
from tests import factories as f
from tests.schemas.host_cases import CANONICAL_URLS, NON_CANONICAL_URLS


def parsed(**fields: Any) -> Conversion:
    event = f.conversion("cv-1", **fields)
    return parse_conversion(b"cv-1", orjson.dumps(event), 65_536)


def fired_url(url: str, conversion_fields: dict[str, Any] | None = None, **entry_fields: Any) -> str:
    """The URL of the postback the processor emits for one s2s entry and one conversion."""
    rules = f.compiled("camp-1", f.s2s_entry("src", url=url, **entry_fields))
    result = f.processor(rules).process([f.source_record(f.conversion("cv-1", **(conversion_fields or {})))])
    (message,) = [orjson.loads(m.value) for m in result.messages if m.topic == "postbacks.s2s"]
    url_value: str = message["url"]
    return url_value


# --- every macro ---------------------------------------------------------------------------------

RICH_CONVERSION: dict[str, Any] = {
    "click_id": "clk-42",
    "campaign_id": "camp-1",
    "type": "deposit",
    "status": "pending",
    "payout": "12.50",
    "currency": "EUR",
    "transaction_id": "tx-9",
    "click_ids": {"external_id": "ext-7", "gclid": "G-1"},
    "subs": {"sub1": "s-one", "sub20": "s-twenty", "aff_id": "A-5"},
}


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        pytest.param("clickid", "clk-42", id="clickid-is-click_id"),
        pytest.param("conversion_id", "cv-1", id="conversion_id"),
        pytest.param("campaign_id", "camp-1", id="campaign_id"),
        pytest.param("external_id", "ext-7", id="external_id-is-the-sources-click-id"),
        pytest.param("type", "deposit", id="type"),
        pytest.param("status", "pending", id="status"),
        pytest.param("payout", "12.5", id="payout"),
        pytest.param("currency", "EUR", id="currency"),
        pytest.param("transaction_id", "tx-9", id="transaction_id"),
        pytest.param("timestamp", str(f.OCCURRED_AT_UNIX), id="timestamp-unix-seconds"),
        pytest.param("sub1", "s-one", id="sub1"),
        pytest.param("sub20", "s-twenty", id="sub20"),
        pytest.param("subs.aff_id", "A-5", id="subs.free-key"),
        pytest.param("subs.sub1", "s-one", id="subs.sub1-same-as-sub1"),
    ],
)
def test_each_macro_renders_its_value(macro: str, expected: str) -> None:
    assert fired_url(f"https://t.example/pb?v={{{macro}}}", RICH_CONVERSION) == f"https://t.example/pb?v={expected}"


def test_every_fixed_macro_is_covered_above() -> None:
    assert {
        "clickid",
        "conversion_id",
        "campaign_id",
        "external_id",
        "type",
        "status",
        "payout",
        "currency",
        "transaction_id",
        "timestamp",
    } == FIXED_MACROS


@pytest.mark.parametrize("n", range(1, 21))
def test_sub1_to_sub20(n: int) -> None:
    url = fired_url(f"https://t.example/pb?s={{sub{n}}}", {"subs": {f"sub{n}": f"value-{n}"}})
    assert url == f"https://t.example/pb?s=value-{n}"


@pytest.mark.parametrize(
    ("occurred_at", "expected"),
    [
        pytest.param("2026-11-20T10:00:00Z", 1_795_168_800, id="utc"),
        pytest.param("2026-11-20T10:00:00+00:00", 1_795_168_800, id="utc-offset"),
        pytest.param("2026-11-20T15:30:00+05:30", 1_795_168_800, id="positive-offset"),
        pytest.param("2026-11-20T02:00:00-08:00", 1_795_168_800, id="negative-offset"),
        pytest.param("2026-11-20T10:00:00.999Z", 1_795_168_800, id="fraction-dropped"),
        pytest.param("1970-01-01T00:00:01Z", 1, id="epoch-plus-one"),
    ],
)
def test_timestamp_is_unix_seconds_of_occurred_at(occurred_at: str, expected: int) -> None:
    url = fired_url("https://t.example/pb?ts={timestamp}", {"occurred_at": occurred_at})
    assert url == f"https://t.example/pb?ts={expected}"


def test_macros_in_path_query_and_fragment_all_render() -> None:
    url = fired_url("https://t.example/{campaign_id}/pb?cid={clickid}&p={payout}#{type}", RICH_CONVERSION)
    assert url == "https://t.example/camp-1/pb?cid=clk-42&p=12.5#deposit"


def test_payout_macro_is_after_payout_percent() -> None:
    assert (
        fired_url("https://t.example/?p={payout}", {"payout": "10"}, payout_percent=33.3) == "https://t.example/?p=3.33"
    )


def test_status_macro_is_the_effective_status() -> None:
    assert fired_url("https://t.example/?s={status}", {"status": ...}) == "https://t.example/?s=approved"


# --- missing values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "conversion_fields"),
    [
        pytest.param("external_id", {"click_ids": ...}, id="external_id-no-click_ids"),
        pytest.param("external_id", {"click_ids": {"gclid": "G"}}, id="external_id-absent"),
        pytest.param("external_id", {"click_ids": {"external_id": None}}, id="external_id-null"),
        pytest.param("external_id", {"click_ids": {"external_id": ""}}, id="external_id-empty"),
        pytest.param("transaction_id", {"transaction_id": ...}, id="transaction_id-absent"),
        pytest.param("transaction_id", {"transaction_id": None}, id="transaction_id-null"),
        pytest.param("sub5", {"subs": {"sub1": "x"}}, id="sub5-absent"),
        pytest.param("sub5", {"subs": ...}, id="sub5-no-subs"),
        pytest.param("sub5", {"subs": {"sub5": ""}}, id="sub5-empty"),
        pytest.param("subs.aff", {"subs": {"other": "x"}}, id="subs-key-absent"),
    ],
)
def test_missing_value_renders_empty(macro: str, conversion_fields: dict[str, Any]) -> None:
    assert (
        fired_url(f"https://t.example/pb?a=1&v={{{macro}}}&z=2", conversion_fields) == "https://t.example/pb?a=1&v=&z=2"
    )


def test_render_with_no_values_leaves_only_the_literal_text() -> None:
    template = compile_url_template("https://t.example/{sub1}/x?a={clickid}&b={subs.k}#{type}")
    assert render_postback_url(template, {}) == "https://t.example//x?a=&b=#"


# --- URL-encoding ---------------------------------------------------------------------------------

HOSTILE_VALUES = [
    pytest.param("a b", "a%20b", id="space"),
    pytest.param("a&evil=1", "a%26evil%3D1", id="ampersand-and-equals"),
    pytest.param("x=y", "x%3Dy", id="equals"),
    pytest.param("../../admin", "..%2F..%2Fadmin", id="slash"),
    pytest.param("a?b=c", "a%3Fb%3Dc", id="question-mark"),
    pytest.param("a#frag", "a%23frag", id="hash"),
    pytest.param("100%", "100%25", id="percent"),
    pytest.param("%41", "%2541", id="already-encoded-looking"),
    pytest.param("a\r\nX-Injected: 1", "a%0D%0AX-Injected%3A%201", id="crlf"),
    pytest.param("line\nbreak", "line%0Abreak", id="lf"),
    pytest.param("tab\there", "tab%09here", id="tab"),
    pytest.param("nul\x00", "nul%00", id="nul"),
    pytest.param("日本", "%E6%97%A5%E6%9C%AC", id="unicode-cjk"),
    pytest.param("café", "caf%C3%A9", id="unicode-latin"),
    pytest.param("😀", "%F0%9F%98%80", id="emoji"),
    pytest.param("+plus", "%2Bplus", id="plus"),
    pytest.param("a;b,c", "a%3Bb%2Cc", id="sub-delims"),
    pytest.param("@:", "%40%3A", id="at-colon"),
    pytest.param("A-z_0.9~", "A-z_0.9~", id="unreserved-kept"),
]


@pytest.mark.parametrize(("value", "encoded"), HOSTILE_VALUES)
def test_values_are_percent_encoded(value: str, encoded: str) -> None:
    template = compile_url_template("https://t.example/p/{sub2}?cid={clickid}&s={sub1}&t={subs.k}")
    url = render_postback_url(template, {"sub1": value, "sub2": value, "clickid": value, "subs.k": value})
    assert url == f"https://t.example/p/{encoded}?cid={encoded}&s={encoded}&t={encoded}"
    split = urlsplit(url)
    # a value can never add a path segment, a query parameter, a fragment or a line
    assert split.path.count("/") == 2
    assert [name for name, _ in parse_qsl(split.query, keep_blank_values=True)] == ["cid", "s", "t"]
    assert split.fragment == ""
    assert not any(ch in url for ch in " \r\n\t\x00")
    assert unquote(split.path.rsplit("/", 1)[1]) == value


@pytest.mark.parametrize(("value", "encoded"), HOSTILE_VALUES)
def test_conversion_values_are_encoded_end_to_end(value: str, encoded: str) -> None:
    url = fired_url("https://t.example/pb?cid={clickid}&s={sub1}", {"click_id": value, "subs": {"sub1": value}})
    assert url == f"https://t.example/pb?cid={encoded}&s={encoded}"


def test_decoded_values_round_trip() -> None:
    value = "a b&c=d/e?f#g%h\r\n日本"
    template = compile_url_template("https://t.example/?v={clickid}")
    rendered = render_postback_url(template, {"clickid": value})
    assert parse_qsl(urlsplit(rendered).query) == [("v", value)]


# --- validation when the rule is published ----------------------------------------------------------

BAD_TEMPLATES = [
    pytest.param("https://t.example/?x={nope}", "unknown macro {nope}", id="unknown-macro"),
    pytest.param("https://t.example/?x={CLICKID}", "unknown macro {CLICKID}", id="macro-names-case-sensitive"),
    pytest.param("https://t.example/?x={click_id}", "unknown macro {click_id}", id="click_id-is-not-a-macro"),
    pytest.param("https://t.example/?x={sub0}", "unknown macro {sub0}", id="sub0"),
    pytest.param("https://t.example/?x={sub21}", "unknown macro {sub21}", id="sub21"),
    pytest.param("https://t.example/?x={}", "unknown macro {}", id="empty-macro"),
    pytest.param("https://t.example/?x={subs.}", "unknown macro {subs.}", id="subs-without-key"),
    pytest.param("https://t.example/?x={subs.a/b}", "unknown macro {subs.a/b}", id="subs-key-bad-char"),
    pytest.param("https://{clickid}.example/", "host", id="macro-in-host"),
    pytest.param("https://t.example{sub1}/", "host", id="macro-appended-to-host"),
    pytest.param("https://t.example:{sub1}/", "host or port", id="macro-in-port"),
    pytest.param("https://{sub1}@t.example/", "host", id="macro-in-userinfo"),
    pytest.param("ftp://t.example/{clickid}", "scheme", id="ftp"),
    pytest.param("javascript://t.example/%0Aalert(1)", "scheme", id="javascript"),
    pytest.param("file:///etc/passwd", "scheme", id="file"),
    pytest.param("//t.example/pb?x={clickid}", "scheme", id="scheme-relative"),
    pytest.param("t.example/pb?x={clickid}", "scheme", id="no-scheme"),
    pytest.param("https:///pb?x={clickid}", "no host", id="no-host"),
    pytest.param("https://t.example:99999/", "port", id="bad-port"),
    pytest.param("https://t.example/a b", "whitespace", id="space"),
    pytest.param("https://t.example/?a=1\r\nHost: evil", "whitespace", id="crlf"),
    pytest.param("https://t.example/?a=\t", "whitespace", id="tab"),
    pytest.param("https://t.example/?a={ clickid }", "whitespace", id="space-inside-macro"),
    pytest.param("https://t.example/\u00a0", "whitespace", id="no-break-space"),
    pytest.param("https://t.example/\u2028", "whitespace", id="unicode-line-separator"),
    pytest.param("https://t.example/\x85", "control", id="c1-next-line"),
    pytest.param("https://t.example/\x7f", "control", id="del"),
    pytest.param("https://t.example/?x={clickid", "unmatched", id="unclosed-brace"),
    pytest.param("https://t.example/?x=clickid}", "unmatched", id="unopened-brace"),
    pytest.param("https://t.example/?x={{clickid}}", "unmatched", id="double-braces"),
    pytest.param("https://t.example/?x={cl{ickid}", "unmatched", id="nested-brace"),
]


@pytest.mark.parametrize(("template", "message"), BAD_TEMPLATES)
def test_bad_template_is_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        compile_url_template(template)
    assert message in str(caught.value)


@pytest.mark.parametrize(("template", "message"), BAD_TEMPLATES)
def test_bad_template_is_a_rule_validation_error(template: str, message: str) -> None:
    document = f.campaign("camp-1", f.s2s_entry("ok"), f.s2s_entry("bad", url=template))
    errors = validate_campaign_rules(document)
    assert [e.field for e in errors] == ["postbacks.1.url"]
    assert message in errors[0].message
    with pytest.raises(InvalidInput) as caught:
        parse_campaign_rules(b"camp-1", orjson.dumps(document))
    assert (caught.value.reason, caught.value.field) == ("invalid_rule", "postbacks.1.url")


@pytest.mark.parametrize(
    ("template", "host", "macros"),
    [
        pytest.param("https://t.example/pb", "t.example", set(), id="no-macros"),
        pytest.param("http://t.example/pb?c={clickid}", "t.example", {"clickid"}, id="http"),
        pytest.param("HTTPS://T.Example/pb?c={clickid}", "t.example", {"clickid"}, id="upper-case-scheme-and-host"),
        pytest.param("https://t.example:8443/{campaign_id}", "t.example", {"campaign_id"}, id="port-and-path-macro"),
        pytest.param("http://127.0.0.1:8080/?s={status}", "127.0.0.1", {"status"}, id="ip-host"),
        pytest.param("https://[::1]/?s={status}", "::1", {"status"}, id="ipv6-host"),
        pytest.param("https://t.example/#{type}", "t.example", {"type"}, id="fragment-macro"),
        pytest.param("https://t.example/?a={subs.a-b.c_D9}", "t.example", {"subs.a-b.c_D9"}, id="subs-key-chars"),
        pytest.param("https://t.example/?a={sub1}{sub2}", "t.example", {"sub1", "sub2"}, id="adjacent-macros"),
        pytest.param(
            "https://t.example/?" + "&".join(f"{m}={{{m}}}" for m in sorted(FIXED_MACROS)),
            "t.example",
            set(FIXED_MACROS),
            id="every-fixed-macro",
        ),
    ],
)
def test_good_template_compiles(template: str, host: str, macros: set[str]) -> None:
    compiled = compile_url_template(template)
    assert compiled.host == host
    assert compiled.macros == macros
    assert validate_campaign_rules(f.campaign("camp-1", f.s2s_entry("e", url=template))) == []


@pytest.mark.parametrize(("url", "why"), NON_CANONICAL_URLS)
def test_a_non_canonical_host_is_refused_when_the_rule_is_published(url: str, why: str) -> None:
    # issue 8, defect 8: these were accepted, then failed in the HTTP client at every attempt for 24 h
    document = f.campaign("camp-1", f.s2s_entry("ok"), f.s2s_entry("bad", url=url + "?cid={clickid}"))
    errors = validate_campaign_rules(document)
    assert [e.field for e in errors] == ["postbacks.1.url"]
    assert why in errors[0].message
    with pytest.raises(InvalidInput) as caught:
        parse_campaign_rules(b"camp-1", orjson.dumps(document))
    assert (caught.value.reason, caught.value.field) == ("invalid_rule", "postbacks.1.url")


@pytest.mark.parametrize(("url", "host"), CANONICAL_URLS)
def test_a_canonical_host_is_accepted(url: str, host: str) -> None:
    assert validate_campaign_rules(f.campaign("camp-1", f.s2s_entry("e", url=url + "?cid={clickid}"))) == []
    assert compile_url_template(url).host == host


@pytest.mark.parametrize(
    ("name", "known"),
    [
        *[(macro, True) for macro in sorted(FIXED_MACROS)],
        ("sub1", True),
        ("sub20", True),
        ("sub21", False),
        ("sub01", False),
        ("subs.x", True),
        ("subs." + "k" * 64, True),
        ("subs." + "k" * 65, False),
        ("email", False),
        ("phone", False),
        ("gclid", False),
    ],
)
def test_is_known_macro(name: str, known: bool) -> None:
    assert is_known_macro(name) is known


def test_destination_is_the_template_host() -> None:
    rules = f.compiled("camp-1", f.s2s_entry("e", url="https://Postback.Example:8443/{clickid}"))
    assert rules.entries[0].destination_id == "s2s:postback.example"


@pytest.mark.parametrize(
    ("entry_fields", "expected_method"),
    [pytest.param({}, "GET", id="default-GET"), pytest.param({"method": "POST"}, "POST", id="POST")],
)
def test_method(entry_fields: dict[str, Any], expected_method: str) -> None:
    rules = f.compiled("camp-1", f.s2s_entry("src", **entry_fields))
    result = f.processor(rules).process([f.source_record(f.conversion("cv-1"))])
    assert orjson.loads(result.messages[0].value)["method"] == expected_method


# --- status_names / type_names (Keitaro: approved -> sale, lead -> install) ---------------------------

KEITARO = {"status_names": {"approved": "sale", "declined": "rejected"}, "type_names": {"lead": "install"}}


@pytest.mark.parametrize(
    ("conversion_fields", "expected_query"),
    [
        pytest.param({"status": "approved", "type": "lead"}, "status=sale&type=install", id="both-renamed"),
        pytest.param({"status": "declined", "type": "deposit"}, "status=rejected&type=deposit", id="status-renamed"),
        pytest.param({"status": "pending", "type": "lead"}, "status=pending&type=install", id="type-renamed"),
        pytest.param({"status": "pending", "type": "Lead"}, "status=pending&type=Lead", id="type-names-case-sensitive"),
        pytest.param({"status": ..., "type": "lead"}, "status=sale&type=install", id="effective-status-renamed"),
    ],
)
def test_status_and_type_names(conversion_fields: dict[str, Any], expected_query: str) -> None:
    rules = f.compiled("camp-1", f.s2s_entry("k", url="https://k.example/pb?status={status}&type={type}", **KEITARO))
    result = f.processor(rules).process([f.source_record(f.conversion("cv-1", **conversion_fields))])
    message = orjson.loads(result.messages[0].value)
    assert message["url"] == f"https://k.example/pb?{expected_query}"
    # only the macro is renamed: the message and its postback id keep the service's names
    assert message["status"] in ("approved", "pending", "declined")
    assert message["type"] == conversion_fields["type"]


def test_renamed_values_are_encoded_too() -> None:
    values = s2s_macro_values(parsed(status="approved"), "approved", "10", {"approved": "a b&c"}, {})
    assert render_postback_url(compile_url_template("https://k.example/?s={status}"), values) == (
        "https://k.example/?s=a%20b%26c"
    )


def test_status_names_take_only_known_statuses() -> None:
    errors = validate_campaign_rules(f.campaign("camp-1", f.s2s_entry("k", status_names={"paid": "sale"})))
    assert [e.field for e in errors] == ["postbacks.0.status_names"]


@pytest.mark.parametrize(("field", "names"), [("status_names", {"approved": "sale"}), ("type_names", {"lead": "x"})])
def test_renaming_applies_to_s2s_only(field: str, names: dict[str, str]) -> None:
    errors = validate_campaign_rules(f.campaign("camp-1", f.meta_entry("fb", **{field: names})))
    assert [e.field for e in errors] == ["postbacks.0"]
    assert field in errors[0].message
