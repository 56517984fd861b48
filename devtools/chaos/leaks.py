"""Scan a run's topics and logs for the secrets and personal data it handled.

Personal data in a chaos run has recognisable shapes (model.personal_data, the hostile records), so the
scan looks for the shapes rather than for every value: raw, URL-encoded, JSON-escaped, and inside any
base64 run (decoded). Where data travels by design it is allowed: a client's IP on
meta and tiktok postbacks and their dispatchers' state (those platforms match on it), and the S2S URL's
credential with the S2S postback (its topic, its state, its dead-letter copy). Nothing else.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from devtools.chaos.model import HOSTILE_PII_DOMAIN, PII_DOMAIN, S2S_TOKEN

EMAIL = re.compile(
    rb"[A-Za-z0-9._-]+(?:@|%40)(?:"
    + re.escape(PII_DOMAIN.encode())
    + rb"|"
    + re.escape(HOSTILE_PII_DOMAIN.encode())
    + rb")"
)
PHONE = re.compile(rb"(?:\+|%2B)44(?: |%20|\+)?7911(?: |%20|\+)?\d{6}")
IP = re.compile(rb"203\.0\.113\.\d{1,3}")
EXTERNAL_ID = re.compile(rb"crm-cv-\d+")
BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{16,}={0,2}")
HEX_ONLY = re.compile(rb"[0-9a-f]+")


@dataclass(frozen=True)
class Scanned:
    where: str  # a topic (with " key" for keys) or a log file
    data: bytes
    may_carry_ip: bool = False
    may_carry_s2s_token: bool = False


def _decoded_runs(data: bytes) -> bytes:
    """Every base64 run of `data` decoded, one per line. A run starts where its string does (after a quote
    or any other character base64 does not use), so it is decoded from there; runs of hex digits only
    (the SHA-256 hashes, most of what matches) cannot hold what the scan looks for and are skipped."""
    decoded = []
    for run in BASE64_RUN.findall(data):
        if HEX_ONLY.fullmatch(run):
            continue
        body = run.rstrip(b"=")
        body = body[: len(body) - len(body) % 4]
        try:
            decoded.append(base64.b64decode(body, validate=True))
        except (binascii.Error, ValueError):
            continue
    return b"\n".join(decoded)


def findings(item: Scanned, secrets: Iterable[str]) -> Counter[str]:
    """What leaked in one place: 'email', 'phone', 'ip', 'external_id', 'secret:<first chars>', 's2s_token'."""
    found: Counter[str] = Counter()
    views = [item.data, _decoded_runs(item.data)]
    patterns = {"email": EMAIL, "phone": PHONE, "external_id": EXTERNAL_ID}
    if not item.may_carry_ip:
        patterns["ip"] = IP
    for view in views:
        for what, pattern in patterns.items():
            found[what] += len(pattern.findall(view))
    for secret in secrets:
        raw = secret.encode()
        if any(raw in view for view in views):
            found[f"secret:{secret[:4]}…"] += 1
    if not item.may_carry_s2s_token and any(S2S_TOKEN.encode() in view for view in views):
        found["s2s_token"] += 1
    return +found
