"""The command line's own checks: what it refuses before connecting to anything."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from postback_router.cli import main

# Nothing listens on port 1: a command that got as far as Kafka would fail naming KAFKA_BOOTSTRAP_SERVERS.
BASE_ENV = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "API_TOKEN": ""}
# The HTTP server's settings under test; HTTP_PORT unset unless a test sets it.
LISTEN_ENV: dict[str, str | None] = {**BASE_ENV, "API_TOKEN": "t" * 32, "HTTP_HOST": "127.0.0.1", "HTTP_PORT": None}
PROCESSES = ["worker", "dispatch", "api"]


@pytest.fixture(autouse=True)
def _logging_left_as_it_was() -> Iterator[None]:
    """A command that gets as far as configure_logging must not leave its handler on the test run's root logger."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A loopback port another socket listens on, as another process's server would."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


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


def test_the_api_needs_a_port_naming_the_flag_when_it_was_used() -> None:
    result = CliRunner().invoke(main, ["api", "--http-port", "0"], env={**LISTEN_ENV, "HTTP_PORT": "8080"})
    assert result.exit_code == 2
    assert result.stderr == "postback-router: --http-port 0: the api needs a port to listen on\n"
    assert "t" * 32 not in result.output


def test_the_api_needs_a_port_naming_the_variable_when_it_was_used() -> None:
    result = CliRunner().invoke(main, ["api"], env={**LISTEN_ENV, "HTTP_PORT": "0"})
    assert result.exit_code == 2
    assert result.stderr == "postback-router: HTTP_PORT=0 (or --http-port): the api needs a port to listen on\n"


@pytest.mark.parametrize("command", PROCESSES)
def test_a_port_in_use_given_by_the_flag_is_one_line_naming_the_flag(command: str) -> None:
    with taken_port() as port:
        # HTTP_PORT is set too: the flag is what was used, so the flag is named
        result = CliRunner().invoke(main, [command, "--http-port", str(port)], env={**LISTEN_ENV, "HTTP_PORT": "1"})
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"postback-router: --http-port {port}: 127.0.0.1:{port} is already in use\n"


@pytest.mark.parametrize("command", PROCESSES)
def test_a_port_in_use_given_by_the_variable_is_one_line_naming_the_variable(command: str) -> None:
    with taken_port() as port:
        result = CliRunner().invoke(main, [command], env={**LISTEN_ENV, "HTTP_PORT": str(port)})
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == f"postback-router: HTTP_PORT={port} (or --http-port): 127.0.0.1:{port} is already in use\n"


@pytest.mark.parametrize("command", PROCESSES)
def test_a_host_that_cannot_be_bound_is_one_line_naming_http_host(command: str) -> None:
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine: no port on it can be bound
    result = CliRunner().invoke(main, [command, "--http-port", "8080"], env={**LISTEN_ENV, "HTTP_HOST": "192.0.2.1"})
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("postback-router: HTTP_HOST=192.0.2.1: cannot listen on 192.0.2.1:8080 (")
    assert "Traceback" not in result.output


def test_a_short_token_is_refused_without_showing_it() -> None:
    result = CliRunner().invoke(main, ["api"], env={**BASE_ENV, "API_TOKEN": "short-secret"})
    assert result.exit_code == 2
    assert "API_TOKEN is too short" in result.output
    assert "short-secret" not in result.output
