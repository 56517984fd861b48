"""The one registry of kinds (schemas/kinds.py) is what every part reads: the contract, rules validation,
settings, the command line and the dispatchers agree on it."""

from __future__ import annotations

from schemas import load_schema
from schemas.kinds import KINDS, OAUTH_KINDS, PLATFORM_KINDS, S2S, STATUSES


def _enum_of(schema: object, name: str) -> list[str]:
    """The `enum` of every property called `name` anywhere in a JSON Schema."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "properties" and isinstance(value, dict) and isinstance(value.get(name), dict):
                found.extend(value[name].get("enum", []))
            found.extend(_enum_of(value, name))
    elif isinstance(schema, list):
        for item in schema:
            found.extend(_enum_of(item, name))
    return found


def test_the_kinds_are_the_contracts() -> None:
    assert (S2S, *PLATFORM_KINDS) == KINDS
    assert set(_enum_of(load_schema("campaign-rules"), "kind")) == set(KINDS)
    assert set(_enum_of(load_schema("matched-postback"), "kind")) <= set(KINDS)
    assert set(PLATFORM_KINDS) >= OAUTH_KINDS


def test_the_statuses_are_the_contracts() -> None:
    assert set(_enum_of(load_schema("conversion"), "status")) - {None} == set(STATUSES)


def test_rules_validation_settings_cli_and_dispatchers_read_the_same_kinds() -> None:
    from click import Choice

    from dispatchers.platforms.registry import PLATFORMS
    from postback_router.cli import dispatch
    from service.settings import load_settings
    from streams.core import rules

    assert set(rules._KIND_FIELDS) == set(KINDS)
    assert set(load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092"}).topics.postbacks) == set(KINDS)
    kind_option = next(p for p in dispatch.params if p.name == "kind")
    assert isinstance(kind_option.type, Choice)
    assert list(kind_option.type.choices) == [*KINDS, "all"]
    assert set(PLATFORMS) == set(PLATFORM_KINDS)
