"""`postback-router`: the one command line of the service (contract §5)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import click

from schemas.kinds import KINDS
from schemas.version import __version__
from service.logs import configure_logging
from service.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from service.ops_http import ListenError


def _fail(message: str) -> NoReturn:
    click.echo(f"postback-router: {message}", err=True)
    sys.exit(2)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        _fail(str(exc))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="postback-router")
def main() -> None:
    """Conditional postbacks as a streaming service. Settings come from the environment (see README)."""


@main.command()
@click.option("--port", type=int, default=None, help="Loopback port to listen on (default: a free one).")
def broker(port: int | None) -> None:
    """Run the embedded development broker (Tansu, in memory) until interrupted."""
    from postback_router.embedded_broker import BrokerError, start_broker

    try:
        running = start_broker(port)
    except BrokerError as exc:
        _fail(str(exc))
    click.echo(f"KAFKA_BOOTSTRAP_SERVERS={running.bootstrap_servers}", nl=True)
    click.echo("embedded broker running (in memory: topics are lost when it stops); Ctrl-C to stop", err=True)
    sys.stdout.flush()
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        while not stop and running.process.poll() is None:
            signal.pause() if hasattr(signal, "pause") else None
    finally:
        running.stop()


@main.command()
def topics() -> None:
    """Create the service's topics (what `worker` does at start-up when AUTO_CREATE_TOPICS=true)."""
    from service.topics import ensure_topics

    settings = _settings()
    try:
        counts = asyncio.run(ensure_topics(settings))
    except RuntimeError as exc:
        _fail(str(exc))
    for topic, partitions in sorted(counts.items()):
        click.echo(f"{topic}\t{partitions} partitions")


_HTTP_PORT = click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port of /metrics, /healthz and /readyz (and the api's routes); overrides HTTP_PORT; 0: none.",
)


def _with_http_port(settings: Settings, http_port: int | None) -> tuple[Settings, str]:
    """The settings with --http-port applied, and how messages name the port: the flag or the variable used."""
    if http_port is not None:
        return dataclasses.replace(settings, http_port=http_port), f"--http-port {http_port}"
    if os.environ.get("HTTP_PORT", "").strip():
        return settings, f"HTTP_PORT={settings.http_port} (or --http-port)"
    return settings, f"HTTP_PORT={settings.http_port} (the default; or --http-port)"


def _listen_failure(exc: ListenError, port_source: str) -> str:
    """One line naming the setting to change: the port's (flag or variable) when taken, else HTTP_HOST."""
    if exc.in_use:
        return f"{port_source}: {exc.address} is already in use"
    if exc.bad_host:
        return f"HTTP_HOST={exc.host}: cannot listen on {exc.address} ({exc.reason})"
    return f"HTTP_HOST={exc.host}, {port_source}: cannot listen on {exc.address} ({exc.reason})"


def _serve(process: Coroutine[Any, Any, None], port_source: str) -> None:
    from service.ops_http import ListenError

    try:
        asyncio.run(process)
    except ListenError as exc:  # the port was taken after _prepare checked it
        _fail(_listen_failure(exc, port_source))


@main.command()
@_HTTP_PORT
def worker(http_port: int | None) -> None:
    """Run the stream processor: match conversions with campaign rules, emit postbacks."""
    from streams.worker import run_worker

    settings, port_source = _with_http_port(_settings(), http_port)
    _prepare(settings, port_source)
    _serve(run_worker(settings), port_source)


@main.command()
@click.option(
    "--kind",
    type=click.Choice([*KINDS, "all"]),
    default="all",
    show_default=True,
    help="Which postbacks.<kind> topic to deliver; `all` runs one dispatcher per kind in this process.",
)
@_HTTP_PORT
def dispatch(kind: str, http_port: int | None) -> None:
    """Deliver matched postbacks: each once, with retries; outcomes to postbacks.results."""
    from dispatchers.dispatcher import run_dispatcher

    settings, port_source = _with_http_port(_settings(), http_port)
    _prepare(settings, port_source)
    _serve(run_dispatcher(settings, kind), port_source)


@main.command()
@_HTTP_PORT
def api(http_port: int | None) -> None:
    """Run the HTTP API: manage rules and offer sources, take conversions in (see /openapi.json)."""
    from postback_router.api.server import run_api

    settings, port_source = _with_http_port(_settings(), http_port)
    if settings.api_token is None:
        _fail("API_TOKEN is not set: the api needs a bearer token for its management routes (16+ characters)")
    if settings.http_port == 0:
        _fail(f"{port_source}: the api needs a port to listen on")
    _prepare(settings, port_source)
    _serve(run_api(settings), port_source)


@main.command()
@click.argument("conversion_id")
@click.option(
    "--api-url",
    envvar="API_URL",
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The api to ask (API_URL). The bearer token is read from API_TOKEN, never from the command line.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the api's JSON document instead of text.")
def trace(conversion_id: str, api_url: str, as_json: bool) -> None:
    """Show what the service did with one conversion (GET /v1/conversions/{id} of the api)."""
    from postback_router.trace_client import TraceNotFound, TraceRequestFailed, fetch_trace

    token = os.environ.get("API_TOKEN", "").strip()
    if not token:
        _fail("API_TOKEN is not set: the trace is read from the api with its bearer token")
    try:
        document, raw = fetch_trace(api_url, token, conversion_id)
    except TraceNotFound as exc:
        click.echo(f"postback-router: {exc}", err=True)
        sys.exit(1)
    except TraceRequestFailed as exc:
        _fail(str(exc))
    if as_json:
        click.echo(raw)
    else:
        from postback_router.api.trace_document import trace_text

        click.echo(trace_text(document))


@main.command()
@click.option("--destination", help="Only this destination_id (s2s:<host>, google_ads:<customer_id>, ...).")
@click.option("--kind", type=click.Choice(KINDS), help="Only postbacks of this kind.")
@click.option("--reason", help="Only this last reason of the results record (http_400, timeout, ...).")
@click.option("--since", help="Failed at or after: a duration back from now (24h, 30m, 7d) or an RFC 3339 time.")
@click.option("--until", help="Failed before: a duration back from now or an RFC 3339 time.")
@click.option("--dry-run", is_flag=True, help="List what would be replayed; write nothing.")
@click.option("--requested-by", default="cli", show_default=True, help="A label kept on each request (no emails).")
def replay(
    destination: str | None,
    kind: str | None,
    reason: str | None,
    since: str | None,
    until: str | None,
    dry_run: bool,
    requested_by: str,
) -> None:
    """Send again postbacks whose last outcome is rejected or dead_lettered (docs/replay.md)."""
    from datetime import UTC, datetime

    from postback_router.replay import BadTime, ReplayFilter, parse_moment
    from postback_router.replay_command import run_replay

    settings = _settings()
    now = datetime.now(UTC)
    try:
        filters = ReplayFilter(
            destination,
            kind,
            reason,
            parse_moment(since, now) if since else None,
            parse_moment(until, now) if until else None,
        )
    except BadTime as exc:
        _fail(str(exc))
    configure_logging("WARNING", settings.kafka_log_level, settings.log_format)
    asyncio.run(run_replay(settings, filters, dry_run=dry_run, requested_by=requested_by))


def _prepare(settings: Settings, port_source: str) -> None:
    """What every long-running process does first: check that its HTTP port is free, logging, then its topics.

    Each failure is one line naming the setting. The port goes first: it fails at once, Kafka may keep a
    start waiting.
    """
    from service.ops_http import ListenError, check_listen
    from service.topics import ensure_topics

    if settings.http_port != 0:
        try:
            asyncio.run(check_listen(settings.http_host, settings.http_port))
        except ListenError as exc:
            _fail(_listen_failure(exc, port_source))
    configure_logging(settings.log_level, settings.kafka_log_level, settings.log_format)
    try:
        asyncio.run(ensure_topics(settings))
    except RuntimeError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
