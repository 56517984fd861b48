"""Exact decimal money: parsed from JSON numbers or strings, written as plain decimal strings."""

from __future__ import annotations

import math
from decimal import Context, Decimal, InvalidOperation

HUNDRED = Decimal(100)
# Wide enough for every exact result the service computes: a payout has at most 30 significant
# digits (18 + 12, schemas/), a payout_percent as many, so payout × percent needs at most 60. The
# default context (28 digits) would round such a payout before it is sent.
_EXACT = Context(prec=100)


def parse_decimal(value: object) -> Decimal:
    """A finite, non-negative Decimal from a JSON number or decimal string.

    JSON numbers arrive as Python floats or ints; `repr` of a float is the shortest text that reads
    back as the same float, which is the literal the sender wrote for up to 15 significant digits,
    so no binary rounding error leaks into what is sent.
    """
    if isinstance(value, bool):
        raise ValueError("must be a number or a decimal string")
    if isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be finite")
        result = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("must be a decimal number") from None
        if not result.is_finite():
            raise ValueError("must be finite")
    else:
        raise ValueError("must be a number or a decimal string")
    if result < 0:
        raise ValueError("must not be negative")
    return result


def format_decimal(value: Decimal) -> str:
    """Plain notation without an exponent or trailing zeros: 5.0000 -> "5", 1E+1 -> "10"."""
    normalized = value.normalize(_EXACT)
    if normalized == 0:
        return "0"
    return format(normalized, "f")


def apply_percent(payout: Decimal, percent: Decimal) -> Decimal:
    """payout × percent / 100, exact (Binom's "Payout %": $10 at 50 % is sent as $5)."""
    if percent == HUNDRED:
        return payout
    return _EXACT.divide(_EXACT.multiply(payout, percent), HUNDRED)
