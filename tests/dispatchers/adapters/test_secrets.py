from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from dispatchers.adapters.secrets import SecretError, SecretStore, env_var_name
from dispatchers.core.secret import Secret

GOOGLE = '{"developer_token": "dev-tok", "client_id": "cid", "client_secret": "csec", "refresh_token": "rtok"}'


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert repr(secret) == str(secret) == "Secret('***')"
    assert "hunter2" not in f"{secret} {secret!r} {[secret]} { ({'k': secret}) }"
    assert secret.reveal() == "hunter2"
    assert secret == Secret("hunter2")
    with pytest.raises(TypeError):
        pickle.dumps(secret)


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("acme", "POSTBACK_SECRET_ACME"),
        ("acme-google", "POSTBACK_SECRET_ACME_GOOGLE"),
        ("a.b_c", "POSTBACK_SECRET_A_B_C"),
    ],
)
def test_env_var_name(name: str, variable: str) -> None:
    assert env_var_name(name) == variable


def test_environment_first_then_file(tmp_path: Path) -> None:
    (tmp_path / "acme").write_text("from-file\n")
    (tmp_path / "other").write_text("other-file\r\n")
    store = SecretStore(env={"POSTBACK_SECRET_ACME": "from-env"}, secrets_dir=tmp_path)
    assert store.get("acme").reveal() == "from-env"
    assert store.get("other").reveal() == "other-file"  # trailing newline stripped


def test_json_object_becomes_a_dict(tmp_path: Path) -> None:
    (tmp_path / "acme-google").write_text(GOOGLE + "\n")
    store = SecretStore(env={"POSTBACK_SECRET_META": '{"access_token": "EAAB"}'}, secrets_dir=tmp_path)
    assert store.get("acme-google").reveal() == {
        "developer_token": "dev-tok",
        "client_id": "cid",
        "client_secret": "csec",
        "refresh_token": "rtok",
    }
    assert store.get_object("meta", ("access_token",)).reveal() == {"access_token": "EAAB"}
    assert "EAAB" not in repr(store.get("meta"))


def test_plain_string_stays_a_string(tmp_path: Path) -> None:
    store = SecretStore(env={"POSTBACK_SECRET_TOKEN": "  spaced value  "}, secrets_dir=tmp_path)
    assert store.get_text("token").reveal() == "  spaced value  "


def test_missing_secret_names_it_and_where_it_looked(tmp_path: Path) -> None:
    store = SecretStore(env={}, secrets_dir=tmp_path)
    with pytest.raises(SecretError) as caught:
        store.get("acme-google")
    message = str(caught.value)
    assert "'acme-google'" in message
    assert "POSTBACK_SECRET_ACME_GOOGLE" in message
    assert str(tmp_path / "acme-google") in message


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", ".hidden", "", "x" * 200, "a b"])
def test_names_that_could_escape_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(SecretError):
        SecretStore(env={}, secrets_dir=tmp_path).get(name)


def test_malformed_json_error_does_not_leak_the_value(tmp_path: Path) -> None:
    (tmp_path / "broken").write_text('{"access_token": "LEAKME", oops}')
    with pytest.raises(SecretError) as caught:
        SecretStore(env={}, secrets_dir=tmp_path).get("broken")
    assert "LEAKME" not in str(caught.value)
    assert "'broken'" in str(caught.value)


def test_type_and_key_checks(tmp_path: Path) -> None:
    store = SecretStore(env={"POSTBACK_SECRET_PLAIN": "tok", "POSTBACK_SECRET_G": GOOGLE}, secrets_dir=tmp_path)
    with pytest.raises(SecretError, match="not a JSON object"):
        store.get_object("plain")
    with pytest.raises(SecretError, match="plain string was expected"):
        store.get_text("g")
    with pytest.raises(SecretError, match="lacks login_customer_id") as caught:
        store.get_object("g", ("client_id", "login_customer_id"))
    assert "csec" not in str(caught.value)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecretError, match="empty"):
        SecretStore(env={}, secrets_dir=tmp_path).get("empty")


def test_values_are_cached_then_reread_for_rotation(tmp_path: Path) -> None:
    clock = [0.0]
    path = tmp_path / "rotating"
    path.write_text("v1")
    store = SecretStore(env={}, secrets_dir=tmp_path, clock=lambda: clock[0], cache_seconds=60)
    assert store.get("rotating").reveal() == "v1"
    path.write_text("v2")
    clock[0] = 59.0
    assert store.get("rotating").reveal() == "v1"
    clock[0] = 60.0
    assert store.get("rotating").reveal() == "v2"


def test_secrets_dir_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "acme").write_text("x")
    store = SecretStore(env={"POSTBACK_SECRETS_DIR": str(tmp_path)})
    assert store.secrets_dir == tmp_path
    assert store.get("acme").reveal() == "x"
