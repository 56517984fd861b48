"""INTAKE_STATUS_MAP (service/settings.py): the default status map of intake."""

from __future__ import annotations

import pytest

from schemas.status_maps import DEFAULT_STATUS_MAP
from service.settings import SettingsError, load_settings


def test_the_default_map_when_unset_or_empty() -> None:
    assert dict(load_settings({}, require_kafka=False).intake_status_map) == dict(DEFAULT_STATUS_MAP)
    assert dict(load_settings({"INTAKE_STATUS_MAP": " "}, require_kafka=False).intake_status_map) == dict(
        DEFAULT_STATUS_MAP
    )


def test_a_map_replaces_the_default_with_its_keys_folded() -> None:
    settings = load_settings({"INTAKE_STATUS_MAP": '{"Paid": "approved", "WAIT": "pending"}'}, require_kafka=False)
    assert dict(settings.intake_status_map) == {"paid": "approved", "wait": "pending"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{sale: approved}", "INTAKE_STATUS_MAP is not JSON"),
        ('["sale"]', "INTAKE_STATUS_MAP: must be a JSON object"),
        ('{"sale": "ok"}', "INTAKE_STATUS_MAP.sale: must be one of approved, pending, declined, other"),
        ('{"declined": "approved"}', "INTAKE_STATUS_MAP.declined: must be declined"),
    ],
)
def test_an_invalid_map_is_refused_at_start_up(raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        load_settings({"INTAKE_STATUS_MAP": raw}, require_kafka=False)
