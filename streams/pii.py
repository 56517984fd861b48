"""Normalisation and SHA-256 hashing of personal data, done before anything is written.

The formats are the ones the ad platforms match on: trimmed, lower-cased email; E.164 phone
numbers; trimmed, lower-cased external ids; all as lowercase hex SHA-256.
"""

from __future__ import annotations

import hashlib


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalize_email(email: str) -> str | None:
    """Trimmed and lower-cased; None when nothing is left."""
    normalized = email.strip().lower()
    return normalized or None


def normalize_phone_e164(phone: str) -> str | None:
    """`+` and the digits of the number, as E.164 writes it.

    Separators, spaces and brackets go; a leading `00` international prefix becomes `+`. A number
    without either prefix is taken to include its country code already, since the service cannot
    know the user's country. None when fewer than 7 or more than 15 digits remain (E.164 allows 15).
    """
    stripped = phone.strip()
    digits = "".join(ch for ch in stripped if ch.isdigit() and ch.isascii())
    if not stripped.startswith("+") and digits.startswith("00"):
        digits = digits[2:]
    digits = digits.lstrip("0")
    if not 7 <= len(digits) <= 15:
        return None
    return "+" + digits


def normalize_external_id(external_id: str) -> str | None:
    normalized = external_id.strip().lower()
    return normalized or None


def hashed_user_identifiers(user: dict[str, str] | None) -> dict[str, str]:
    """The hashed identifiers of a conversion's `user`; fields that are absent or empty are left out.

    Phones get two hashes: of `+<digits>` (Google Ads, TikTok) and of the bare digits (Meta).
    """
    if not user:
        return {}
    hashed: dict[str, str] = {}
    email = user.get("email")
    if email:
        normalized = normalize_email(email)
        if normalized:
            hashed["email_sha256"] = sha256_hex(normalized)
    phone = user.get("phone")
    if phone:
        e164 = normalize_phone_e164(phone)
        if e164:
            hashed["phone_sha256"] = sha256_hex(e164)
            hashed["phone_digits_sha256"] = sha256_hex(e164[1:])
    external_id = user.get("external_id")
    if external_id:
        normalized = normalize_external_id(external_id)
        if normalized:
            hashed["external_id_sha256"] = sha256_hex(normalized)
    return hashed
