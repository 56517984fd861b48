"""A TLS-terminating proxy on loopback, in front of the embedded broker (which speaks PLAINTEXT only).

Like a managed cluster's TLS listener: it presents a server certificate, optionally requires a client
certificate (mutual TLS), and forwards the decrypted bytes to the broker. The broker must advertise the
proxy's address (`tls_broker`), else clients would follow the metadata to the broker's own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from postback_router.embedded_broker import EmbeddedBroker, free_loopback_port, start_broker
from tests.tls_certificates import Certificate

PROXY_START_TIMEOUT_SECONDS = 10.0


@dataclass
class TlsProxy:
    port: int
    upstream_port: int
    context: ssl.SSLContext
    handshakes: int = 0  # TLS sessions established: the clients did come through here
    _server: asyncio.Server | None = None
    _pipes: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1  # start_server calls back only once the handshake has succeeded
        try:
            broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        pipes = [
            asyncio.create_task(_pipe(client_reader, broker_writer)),
            asyncio.create_task(_pipe(broker_reader, client_writer)),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
                self._pipes.discard(task)
            for writer in (client_writer, broker_writer):
                writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def server_context(server: Certificate, client_ca: Certificate | None = None) -> ssl.SSLContext:
    """The proxy's side: its certificate, and with `client_ca` a client certificate signed by it required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    if client_ca is not None:
        context.load_verify_locations(client_ca.cert)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@contextlib.contextmanager
def tls_broker(context: ssl.SSLContext, log_path: Path) -> Iterator[tuple[EmbeddedBroker, TlsProxy]]:
    """A dedicated embedded broker advertising 127.0.0.1:<proxy port>, and the proxy in front of it.

    The proxy has its own thread and event loop: a test that blocks its own loop (waiting for a
    subprocess to stop, which needs Kafka to leave its group) must not stall the processes' traffic.
    """
    proxy_port = free_loopback_port()
    broker = start_broker(log_path=str(log_path), advertised_port=proxy_port)
    proxy = TlsProxy(proxy_port, broker.port, context)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(proxy.start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(proxy.stop())
        loop.close()

    thread = threading.Thread(target=serve, name="tls-proxy", daemon=True)
    thread.start()
    try:
        assert started.wait(PROXY_START_TIMEOUT_SECONDS), "the TLS proxy did not start"
        yield broker, proxy
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(PROXY_START_TIMEOUT_SECONDS)
        broker.stop()
