"""Run-time validation against the JSON Schemas in `schemas/`, mapped to bounded reason codes.

fastjsonschema compiles a schema into plain Python (about 13 µs for a typical conversion), which is
what the hot path can afford; jsonschema, which lists every failing field, is used where a person
reads the answer (rule validation) and in the tests.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema

from schemas import load_schema
from schemas.errors import FieldError, InvalidInput, InvalidReason


@functools.cache
def fast_validator(schema_name: str) -> Callable[[Any], Any]:
    # A copy: fastjsonschema rewrites the `$ref`s of what it compiles, and load_schema's dicts are shared.
    return fastjsonschema.compile(copy.deepcopy(load_schema(schema_name)))  # type: ignore[no-any-return]


@functools.cache
def full_validator(schema_name: str) -> jsonschema.protocols.Validator:
    schema = load_schema(schema_name)
    validator_class = jsonschema.validators.validator_for(schema)
    return validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)  # type: ignore[no-any-return]


def _field_path(path: list[str] | tuple[Any, ...]) -> str:
    parts = [str(p) for p in path if p != "data"]
    return ".".join(parts) if parts else "(record)"


def check_fast(schema_name: str, data: Any) -> None:
    """Raise InvalidInput for the first schema violation of `data`."""
    try:
        fast_validator(schema_name)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        raise _invalid_from_fast(exc, data) from None


def _invalid_from_fast(exc: fastjsonschema.JsonSchemaValueException, data: Any) -> InvalidInput:
    path = list(exc.path or [])
    field_name = _field_path(path)
    reason: InvalidReason
    if exc.rule == "required":
        required = exc.rule_definition if isinstance(exc.rule_definition, list) else []
        container = exc.value if isinstance(exc.value, dict) else {}
        missing = [name for name in required if name not in container]
        prefix = "" if field_name == "(record)" else field_name + "."
        fields = [prefix + name for name in missing] or [field_name]
        return InvalidInput(
            "missing_field",
            f"missing required field(s): {', '.join(fields)}",
            field=fields[0],
            errors=[FieldError(f, "is required") for f in fields],
        )
    if exc.rule == "type" or (exc.rule == "anyOf" and not _is_scalar(exc.value)):
        reason = "wrong_type"
    else:
        reason = "invalid_value"
    message = _describe(exc, field_name)
    return InvalidInput(reason, message, field=field_name, errors=[FieldError(field_name, message)])


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _describe(exc: fastjsonschema.JsonSchemaValueException, field_name: str) -> str:
    # fastjsonschema's messages name the rule, not the value, except for the anyOf wording; say what
    # the field needs instead, so that no value (possibly personal data) is echoed.
    if exc.rule == "anyOf":
        # the only anyOf in the schemas is the decimal (number >= 0 or decimal string)
        if _is_scalar(exc.value) and not isinstance(exc.value, str) and exc.value < 0:
            return f"{field_name} must not be negative"
        return f"{field_name} must be a non-negative decimal number or decimal string"
    if exc.rule == "additionalProperties":
        # fastjsonschema lists the unknown names, which are input too (an email used as a key)
        allowed = ", ".join(sorted((exc.definition or {}).get("properties", {})))
        return f"{field_name} has fields that are not allowed (allowed: {allowed})"
    message = str(exc.message).removeprefix("data.").removeprefix("data ")
    return message


def check_all(schema_name: str, data: Any) -> list[FieldError]:
    """Every schema violation of `data`, one per failing field, for answers read by people."""
    try:
        fast_validator(schema_name)(data)
        return []  # the common case, and over ten times faster than collecting every error
    except fastjsonschema.JsonSchemaValueException:
        pass
    errors: dict[FieldError, None] = {}  # ordered set: jsonschema reports a `required` once per missing name
    # Any: jsonschema's stubs type instance/validator_value as possibly "unset", which they never are here
    found: list[Any] = sorted(full_validator(schema_name).iter_errors(data), key=lambda e: list(map(str, e.path)))
    for error in found:
        field_name = _field_path(tuple(error.absolute_path))
        if error.validator == "required":
            missing = [name for name in error.validator_value if name not in (error.instance or {})]
            prefix = "" if field_name == "(record)" else field_name + "."
            errors.update(dict.fromkeys(FieldError(prefix + name, "is required") for name in missing))
        else:
            errors[FieldError(field_name, _describe_full(error))] = None
    return list(errors)


def _describe_full(error: Any) -> str:
    validator = error.validator
    value = error.validator_value
    if validator == "type":
        return f"must be of type {value}"
    if validator == "enum":
        return "must be one of " + ", ".join(map(repr, value))
    if validator == "const":
        return f"must be {value!r}"
    if validator == "pattern":
        return f"must match {value}"
    if validator == "additionalProperties":
        return "has unknown fields: " + ", ".join(sorted(set(error.instance) - set(error.schema.get("properties", {}))))
    if validator in ("minLength", "maxLength", "minItems", "maxItems", "maxProperties"):
        return f"violates {validator} {value}"
    if validator == "anyOf":
        return "must be a non-negative decimal number or decimal string"
    if validator == "uniqueItems":
        return "must not repeat items"
    if validator == "propertyNames":
        return "has a key that is not allowed"
    return f"violates {validator}"
