"""The kinds of postback destination: the one registry that settings, rules validation, the command
line and the dispatchers read (contract §3), with how each ad platform's API version is set.

Pure data and one pure function; the sunset dates of the versions are delivery knowledge and live in
`dispatchers/platforms/api_versions.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

S2S = "s2s"
PLATFORM_KINDS = ("google_ads", "meta", "tiktok", "microsoft_ads")
# Every kind, in the order topics and metrics list them; the `kind` enum of campaign-rules.schema.json.
KINDS = (S2S, *PLATFORM_KINDS)
# Platforms whose credentials are OAuth refresh tokens (an access token is fetched and cached).
OAUTH_KINDS = frozenset({"google_ads", "microsoft_ads"})
# Conversion statuses (contract §1); the `status` enum of conversion.schema.json.
STATUSES = ("approved", "pending", "declined", "other")


# Default API versions, live on 2026-11-30 by each platform's published schedule (sources beside SUNSETS in
# dispatchers/platforms/api_versions.py):
# - Google Ads v26: released October 2026, projected sunset November 2027; the "Deprecation and sunset"
#   page (developers.google.com/google-ads/api/docs/sunset-dates) recommends starting with it.
# - Meta v26.0: released 2026-07-29, expiration TBD (v27.0, released 2026-11-04, also TBD).
# - TikTok v1.3: current since 2022-08-15, no end date announced.
# - Microsoft Advertising v13: GA April 2019, no sunset announced.
DEFAULT_VERSIONS: Mapping[str, str] = {
    "google_ads": "v26",
    "meta": "v26.0",
    "tiktok": "v1.3",
    "microsoft_ads": "v13",
}

# The environment variable that sets each platform's version (service/settings.py reads them).
VERSION_SETTINGS: Mapping[str, str] = {
    "google_ads": "GOOGLE_ADS_API_VERSION",
    "meta": "META_GRAPH_API_VERSION",
    "tiktok": "TIKTOK_API_VERSION",
    "microsoft_ads": "MICROSOFT_ADS_API_VERSION",
}

# How each setting is written: the pattern (on the stripped, lower-cased value) and the one form it is
# normalised to. Google's REST path takes the major version only (`/v26/...`); `26` is accepted too.
_FORMS: Mapping[str, tuple[re.Pattern[str], str]] = {
    "google_ads": (re.compile(r"^v?0*([1-9]\d{0,2})$"), "v26 (or 26)"),
    "meta": (re.compile(r"^v0*([1-9]\d{0,2})\.(\d{1,2})$"), "v26.0"),
    "tiktok": (re.compile(r"^v0*([1-9]\d?)\.(\d{1,2})$"), "v1.3"),
    "microsoft_ads": (re.compile(r"^v0*([1-9]\d{0,2})$"), "v13"),
}


def normalize_version(kind: str, raw: str) -> str:
    """The one form of a platform version (`26` -> `v26` for Google); ValueError says what is expected."""
    if kind not in _FORMS:
        raise ValueError(f"no API version for kind {kind!r}")
    pattern, example = _FORMS[kind]
    match = pattern.match(raw.strip().lower())
    if match is None:
        raise ValueError(f"expected an API version such as {example}")
    return "v" + ".".join(str(int(part)) for part in match.groups())
