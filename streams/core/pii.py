"""Normalisation and SHA-256 hashing of personal data, done before anything is written.

The formats are the ones the ad platforms match on: trimmed, lower-cased email; E.164 phone
numbers; trimmed, lower-cased external ids; all as lowercase hex SHA-256.

Phone numbers are read with `phonenumbers` (Google's libphonenumber): a number written the national
way (`07911 123456`) needs its region's rules to become E.164, so it is read in the conversion's
region (see `phone_region`); a number with its country code (`+44…`, `0044…`) needs none. A number
that cannot be made a valid E.164 number is not hashed at all, and the caller is told why.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal

import phonenumbers

# Why a phone number was left out: the `reason` label of postback_pii_unusable_total.
PhoneUnusableReason = Literal["no_region", "unknown_region", "unparseable", "invalid_number"]

# A leading `00` (after spaces or brackets) is the international prefix of most of the world: it is
# read as `+`, whatever the region, when the region's own rules do not make it a valid number.
_LEADING_00 = re.compile(r"^([^\w+]*)00")
_INTERNATIONAL = re.compile(r"^[^\w+]*(\+|00)")


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_email(email: str) -> str | None:
    """Trimmed and lower-cased; None when nothing is left."""
    normalized = email.strip().lower()
    return normalized or None


def is_known_region(region: str) -> bool:
    """Whether `region` (ISO 3166-1 alpha-2, any case) has a numbering plan libphonenumber knows."""
    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def phone_region(conversion_country: str | None, offer_source_region: str | None, default: str | None) -> str | None:
    """The region a national-format phone number is read in: the conversion's own `country`, else its
    offer source's `default_region`, else DEFAULT_PHONE_REGION; upper-cased. The first one given is
    used even when libphonenumber does not know it (the number is then counted `unknown_region`
    rather than read in a country the conversion did not name)."""
    for region in (conversion_country, offer_source_region, default):
        if region:
            return region.upper()
    return None


def phone_e164(phone: str, region: str | None = None) -> tuple[str, None] | tuple[None, PhoneUnusableReason]:
    """(E.164 number, None), or (None, why it cannot be used). `region`: ISO 3166-1 alpha-2 or None.

    Nothing returned or raised here contains the number itself.
    """
    reason: PhoneUnusableReason
    try:
        e164 = _valid_e164(phone, region.upper() if region and is_known_region(region) else None)
    except phonenumbers.NumberParseException as exc:
        e164, reason = None, _parse_failure(exc, phone, region)
    else:
        reason = "invalid_number"
    if e164 is None and _LEADING_00.match(phone):
        with contextlib.suppress(phonenumbers.NumberParseException):
            e164 = _valid_e164(_LEADING_00.sub(r"\1+", phone, count=1), None)
    return (None, reason) if e164 is None else (e164, None)


def _valid_e164(text: str, region: str | None) -> str | None:
    number = phonenumbers.parse(text, region)
    # A number that is not valid for its region (wrong length, a range never assigned) would still
    # give a hash, but one the platform can never match: it is left out instead.
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _parse_failure(exc: phonenumbers.NumberParseException, phone: str, region: str | None) -> PhoneUnusableReason:
    if exc.error_type == phonenumbers.NumberParseException.NOT_A_NUMBER:
        return "unparseable"
    if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and not _INTERNATIONAL.match(phone):
        # a national number: its region is missing, or one libphonenumber does not know
        return "unknown_region" if region else "no_region"
    return "invalid_number"  # too short, too long, or a country code that does not exist


def normalize_phone_e164(phone: str, region: str | None = None) -> str | None:
    """The E.164 form of `phone` (read in `region` when it has no country code), or None."""
    return phone_e164(phone, region)[0]


def normalize_external_id(external_id: str) -> str | None:
    normalized = external_id.strip().lower()
    return normalized or None


@dataclass(frozen=True, slots=True)
class HashedUser:
    identifiers: dict[str, str] = field(default_factory=dict)  # email_sha256, phone_sha256, ...
    unusable: dict[str, PhoneUnusableReason] = field(default_factory=dict)  # field -> why it was left out


def hashed_user_identifiers(user: dict[str, str] | None, phone_region: str | None = None) -> HashedUser:
    """The hashed identifiers of a conversion's `user`; fields that are absent or empty are left out,
    and so is a phone number that is not a valid E.164 number (listed in `unusable` with the reason).

    Phones get two hashes: of the E.164 number with its `+` (Google Ads, TikTok) and of its digits
    alone (Meta). `phone_region` reads national-format numbers (see `phone_region()`).
    """
    if not user:
        return HashedUser()
    hashed: dict[str, str] = {}
    unusable: dict[str, PhoneUnusableReason] = {}
    email = user.get("email")
    if email:
        normalized = normalize_email(email)
        if normalized:
            hashed["email_sha256"] = sha256_hex(normalized)
    phone = user.get("phone")
    if phone and phone.strip():
        e164, reason = phone_e164(phone, phone_region)
        if e164 is not None:
            hashed["phone_sha256"] = sha256_hex(e164)
            hashed["phone_digits_sha256"] = sha256_hex(e164[1:])
        elif reason is not None:
            unusable["phone"] = reason
    external_id = user.get("external_id")
    if external_id:
        normalized = normalize_external_id(external_id)
        if normalized:
            hashed["external_id_sha256"] = sha256_hex(normalized)
    return HashedUser(hashed, unusable)
