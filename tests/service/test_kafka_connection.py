"""KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_*: validated at start-up, mapped onto every aiokafka client.

The embedded broker has no SASL users, so the SASL side is checked here: the settings become the keyword
arguments aiokafka's producer, consumer and admin client take (constructed for real), and no password
reaches a repr or an error message. TLS end to end: tests/integration/test_kafka_tls.py.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from service.kafka_connection import KafkaConnection
from service.settings import Settings, SettingsError, load_settings
from tests.tls_certificates import Certificate, encrypt_key, make_ca, make_leaf

BOOTSTRAP = "b-1.example.kafka.eu-west-1.amazonaws.com:9096,b-2.example.kafka.eu-west-1.amazonaws.com:9096"
PASSWORD = "s3cret-pa55word-never-shown"
KEY_PASSWORD = "key-pa55word-never-shown"


def settings(**env: str) -> Settings:
    return load_settings({"KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP, **env})


def refused(**env: str) -> str:
    with pytest.raises(SettingsError) as caught:
        settings(**env)
    message = str(caught.value)
    assert PASSWORD not in message and KEY_PASSWORD not in message
    return message


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_ca(tmp_path_factory.mktemp("tls"), "unit-ca")


@pytest.fixture(scope="module")
def client_cert(ca: Certificate) -> Certificate:
    return make_leaf(ca, ca.cert.parent, "unit-client", client=True)


SCRAM = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "postback-router",
    "KAFKA_SASL_PASSWORD": PASSWORD,
}


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    kafka = settings().kafka
    assert kafka == KafkaConnection.plaintext(BOOTSTRAP)
    assert kafka.client_kwargs() == {"bootstrap_servers": BOOTSTRAP, "security_protocol": "PLAINTEXT"}


def test_sasl_ssl_scram_maps_onto_the_client_arguments(ca: Certificate) -> None:
    kafka = settings(**SCRAM, KAFKA_SSL_CAFILE=str(ca.cert)).kafka
    kwargs = kafka.client_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "bootstrap_servers": BOOTSTRAP,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "postback-router",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "unit-ca"),),)]
    assert kafka.client_kwargs()["ssl_context"] is context  # one context, shared by every client


def test_sasl_ssl_without_a_ca_file_trusts_the_system_cas() -> None:
    # Confluent Cloud and MSK present certificates of public CAs: no KAFKA_SSL_CAFILE needed.
    context = settings(**{**SCRAM, "KAFKA_SASL_MECHANISM": "PLAIN"}).kafka.ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_sasl_plaintext_has_no_tls() -> None:
    kwargs = settings(
        **{**SCRAM, "KAFKA_SECURITY_PROTOCOL": "sasl_plaintext", "KAFKA_SASL_MECHANISM": "scram-sha-256"}
    ).kafka.client_kwargs()
    assert "ssl_context" not in kwargs
    assert (kwargs["security_protocol"], kwargs["sasl_mechanism"]) == ("SASL_PLAINTEXT", "SCRAM-SHA-256")


async def test_every_aiokafka_client_takes_the_arguments(ca: Certificate) -> None:
    # aiokafka checks them when a client is built (a mechanism it does not know, SSL without a context).
    for env in (SCRAM, {**SCRAM, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN"}, {}):
        kwargs = settings(**env).kafka.client_kwargs()
        AIOKafkaProducer(**kwargs)
        AIOKafkaConsumer(**kwargs, group_id=None)
        AIOKafkaAdminClient(**kwargs)
    kwargs = settings(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(ca.cert)).kafka.client_kwargs()
    AIOKafkaConsumer(**kwargs, group_id=None)


def test_the_password_from_a_file_drops_one_trailing_line_break(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    env = {**SCRAM, "KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": str(secret)}
    assert settings(**env).kafka_security.sasl_password == PASSWORD


def test_password_and_password_file_are_exclusive(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD)
    message = refused(**SCRAM, KAFKA_SASL_PASSWORD_FILE=str(secret))
    assert message == "KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are both set: use one of them"


def test_a_password_file_that_cannot_be_read_or_is_empty(tmp_path: Path) -> None:
    env = {**SCRAM, "KAFKA_SASL_PASSWORD": ""}
    assert refused(**env, KAFKA_SASL_PASSWORD_FILE=str(tmp_path / "missing")).startswith(
        f"KAFKA_SASL_PASSWORD_FILE={tmp_path / 'missing'}: cannot be read"
    )
    (tmp_path / "empty").write_text("\n")
    assert "the file is empty" in refused(**env, KAFKA_SASL_PASSWORD_FILE=str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "TLS"},
            "KAFKA_SECURITY_PROTOCOL='TLS': must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
        ),
        (
            {**SCRAM, "KAFKA_SASL_MECHANISM": ""},
            "KAFKA_SASL_MECHANISM='': KAFKA_SECURITY_PROTOCOL=SASL_SSL needs one of",
        ),
        (
            {**SCRAM, "KAFKA_SASL_MECHANISM": "GSSAPI"},
            "KAFKA_SASL_MECHANISM='GSSAPI': KAFKA_SECURITY_PROTOCOL=SASL_SSL needs",
        ),
        ({**SCRAM, "KAFKA_SASL_MECHANISM": "OAUTHBEARER"}, "KAFKA_SASL_MECHANISM=OAUTHBEARER is not supported: "),
        (
            {**SCRAM, "KAFKA_SASL_USERNAME": ""},
            "KAFKA_SASL_USERNAME is not set: KAFKA_SECURITY_PROTOCOL=SASL_SSL needs it",
        ),
        ({**SCRAM, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE) is not set"),
        (
            {**SCRAM, "KAFKA_SECURITY_PROTOCOL": "SSL"},
            "KAFKA_SASL_MECHANISM is set but KAFKA_SECURITY_PROTOCOL=SSL does not use SASL",
        ),
        (
            {"KAFKA_SASL_PASSWORD": PASSWORD},
            "KAFKA_SASL_PASSWORD is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use SASL",
        ),
        (
            {"KAFKA_SSL_CAFILE": "/ca.pem"},
            "KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS",
        ),
        (
            {**SCRAM, "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SSL_CHECK_HOSTNAME": "false"},
            "KAFKA_SSL_CHECK_HOSTNAME is set but",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "maybe"},
            "KAFKA_SSL_CHECK_HOSTNAME='maybe': expected true or false",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/ca.pem"},
            "KAFKA_SSL_CAFILE=/no/ca.pem: no such readable file",
        ),
    ],
)
def test_bad_security_settings_are_refused_naming_the_setting(env: dict[str, str], expected: str) -> None:
    assert refused(**env).startswith(expected)


def test_oauthbearer_says_why_and_what_to_use_instead() -> None:
    message = refused(**{**SCRAM, "KAFKA_SASL_MECHANISM": "oauthbearer"})
    assert "token provider" in message and "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512" in message


def test_a_ca_file_that_is_not_pem_is_refused_at_start_up(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    message = refused(KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(not_pem))
    assert message.startswith(f"KAFKA_SSL_CAFILE='{not_pem}': not a readable PEM CA bundle")


def test_a_client_certificate_with_an_encrypted_key(ca: Certificate, client_cert: Certificate, tmp_path: Path) -> None:
    key = encrypt_key(client_cert.key, KEY_PASSWORD)
    password_file = tmp_path / "key-password"
    password_file.write_text(KEY_PASSWORD + "\n")
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": str(ca.cert),
        "KAFKA_SSL_CERTFILE": str(client_cert.cert),
        "KAFKA_SSL_KEYFILE": str(key),
    }
    assert settings(**env, KAFKA_SSL_KEY_PASSWORD_FILE=str(password_file)).kafka.ssl_context is not None
    assert "cannot be loaded" in refused(**env)  # no password: refused, never asked for at a terminal
    message = refused(**env, KAFKA_SSL_KEY_PASSWORD="wrong-" + KEY_PASSWORD)
    assert message.startswith("KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE: the client certificate and key cannot be loaded")
    assert "wrong-" not in message
    assert refused(**{**env, "KAFKA_SSL_CERTFILE": ""}).startswith(
        "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE"
    )
    other = make_leaf(ca, tmp_path, "other-client", client=True)
    mismatched = {**env, "KAFKA_SSL_KEYFILE": str(other.key)}
    assert "cannot be loaded" in refused(**mismatched)


def test_hostname_verification_can_be_turned_off_but_the_chain_is_still_verified(ca: Certificate) -> None:
    context = settings(
        KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(ca.cert), KAFKA_SSL_CHECK_HOSTNAME="false"
    ).kafka.ssl_context
    assert context is not None
    assert context.check_hostname is False and context.verify_mode == ssl.CERT_REQUIRED


def test_no_password_in_any_repr(ca: Certificate, client_cert: Certificate) -> None:
    key = encrypt_key(client_cert.key, KEY_PASSWORD)
    loaded = settings(
        **SCRAM,
        KAFKA_SSL_CAFILE=str(ca.cert),
        KAFKA_SSL_CERTFILE=str(client_cert.cert),
        KAFKA_SSL_KEYFILE=str(key),
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    )
    for text in (repr(loaded), str(loaded), repr(loaded.kafka), repr(loaded.kafka_security), loaded.kafka.describe()):
        assert PASSWORD not in text and KEY_PASSWORD not in text
    assert loaded.kafka.describe() == f"KAFKA_BOOTSTRAP_SERVERS={BOOTSTRAP!r} (SASL_SSL/SCRAM-SHA-512)"
