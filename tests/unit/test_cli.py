"""The command line's own checks: what it refuses before connecting to anything."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from postback_router.cli import main

BASE_ENV = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "API_TOKEN": ""}


@pytest.mark.parametrize("command", ["worker", "dispatch", "api"])
def test_every_process_takes_an_http_port(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "--http-port" in result.output


@pytest.mark.parametrize("port", ["-1", "65536", "eighty"])
def test_a_bad_http_port_is_refused(port: str) -> None:
    result = CliRunner().invoke(main, ["worker", "--http-port", port], env=BASE_ENV)
    assert result.exit_code == 2
    assert "--http-port" in result.output


def test_the_api_refuses_to_start_without_a_token() -> None:
    result = CliRunner().invoke(main, ["api"], env=BASE_ENV)
    assert result.exit_code == 2
    assert "API_TOKEN is not set" in result.output


def test_the_api_needs_a_port() -> None:
    env = {**BASE_ENV, "API_TOKEN": "t" * 32}
    result = CliRunner().invoke(main, ["api", "--http-port", "0"], env=env)
    assert result.exit_code == 2
    assert "HTTP_PORT=0" in result.output
    assert "t" * 32 not in result.output


def test_a_short_token_is_refused_without_showing_it() -> None:
    result = CliRunner().invoke(main, ["api"], env={**BASE_ENV, "API_TOKEN": "short-secret"})
    assert result.exit_code == 2
    assert "API_TOKEN is too short" in result.output
    assert "short-secret" not in result.output
