"""How the service's topics are created: compacted where the contract says so, the index time-bounded."""

from __future__ import annotations

from service.settings import load_settings
from service.topics import topic_configs


def test_topic_configs() -> None:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "FIRED_STATE_RETENTION": "30d"})
    topics = settings.topics
    assert topic_configs(settings, topics.campaign_rules) == {"cleanup.policy": "compact"}
    assert topic_configs(settings, topics.offer_sources) == {"cleanup.policy": "compact"}
    assert topic_configs(settings, topics.conversion_index) == {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(30 * 86400 * 1000),
    }
    assert topic_configs(settings, topics.conversions) == {}
    assert topic_configs(settings, topics.postbacks["s2s"]) == {}
    assert topic_configs(settings, settings.fired_state_changelog, compact=True) == {"cleanup.policy": "compact"}


def test_the_evaluations_topic_is_kept_for_its_retention() -> None:
    settings = load_settings({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "EVALUATIONS_RETENTION": "7d"})
    assert topic_configs(settings, settings.topics.evaluations) == {"retention.ms": str(7 * 86400 * 1000)}
