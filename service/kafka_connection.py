"""How every Kafka client of the service reaches the cluster: bootstrap servers, TLS and SASL.

One value, `KafkaConnection`, carries what KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*
and KAFKA_SSL_* say (service/settings.py reads and validates them); `client_kwargs()` turns it into the
keyword arguments that AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient all take, so that no
client can be built that forgets the security settings. Secrets are kept out of repr().
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True)
class KafkaSecurity:
    """KAFKA_SECURITY_PROTOCOL and what it needs; the defaults are a PLAINTEXT cluster."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None  # None: the system's trusted CAs
    ssl_certfile: str | None = None  # a client certificate (mutual TLS), its key in it or in ssl_keyfile
    ssl_keyfile: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def build_ssl_context(security: KafkaSecurity) -> ssl.SSLContext:
    """A client TLS context: the CA file (or the system's CAs), the client certificate if any, and the
    broker's host name checked unless KAFKA_SSL_CHECK_HOSTNAME=false (the chain is verified either way).

    Raises ValueError naming the setting whose file cannot be used; the message never holds a password.
    """
    try:
        context = ssl.create_default_context(cafile=security.ssl_cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"KAFKA_SSL_CAFILE={security.ssl_cafile!r}: not a readable PEM CA bundle ({_why(exc)})"
        ) from None
    context.check_hostname = security.ssl_check_hostname
    if security.ssl_certfile:
        try:
            # An encrypted key without KAFKA_SSL_KEY_PASSWORD must fail, not make OpenSSL ask at a terminal.
            password = security.ssl_key_password if security.ssl_key_password is not None else _no_password
            context.load_cert_chain(security.ssl_certfile, security.ssl_keyfile, password)
        except (OSError, ssl.SSLError) as exc:
            names = "KAFKA_SSL_CERTFILE" + (", KAFKA_SSL_KEYFILE" if security.ssl_keyfile else "")
            raise ValueError(
                f"{names}: the client certificate and key cannot be loaded (unreadable, not PEM, a key that does "
                f"not match the certificate, or a wrong KAFKA_SSL_KEY_PASSWORD): {_why(exc)}"
            ) from None
    return context


def _no_password() -> str:
    return ""


def _why(exc: OSError | ssl.SSLError) -> str:
    # ssl and OS errors name a file and a reason, never the key password they were given.
    return f"{exc.__class__.__name__}: {exc.strerror or exc}" if isinstance(exc, OSError) else str(exc)


@dataclass(frozen=True)
class KafkaConnection:
    """Where the cluster is and how to authenticate to it; one per process, shared by every client."""

    bootstrap_servers: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def plaintext(cls, bootstrap_servers: str) -> KafkaConnection:
        """A cluster without TLS or SASL (the embedded development broker, tests, devtools)."""
        return cls(bootstrap_servers)

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        # Built once: every client of the process shares it (certificates are read from disk once).
        return build_ssl_context(self.security) if self.security.uses_ssl else None

    def client_kwargs(self) -> dict[str, Any]:
        """The keyword arguments every aiokafka client takes to reach this cluster."""
        security = self.security
        kwargs: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers, "security_protocol": security.protocol}
        if security.uses_ssl:
            kwargs["ssl_context"] = self.ssl_context
        if security.uses_sasl:
            kwargs["sasl_mechanism"] = security.sasl_mechanism
            kwargs["sasl_plain_username"] = security.sasl_username
            kwargs["sasl_plain_password"] = security.sasl_password
        return kwargs

    async def tls_handshake_error(self, timeout: float = 5.0) -> str | None:
        """Why a TLS handshake with the first bootstrap server fails (an untrusted certificate, a host name
        it does not name), or None; the Kafka client only says it could not bootstrap."""
        if self.ssl_context is None:
            return None
        host, _, port = self.bootstrap_servers.split(",")[0].strip().rpartition(":")
        host = host.strip("[]")
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(host, int(port), ssl=self.ssl_context, server_hostname=host), timeout
            )
        except ssl.SSLError as exc:
            return f"TLS handshake with {host}:{port} failed: {exc.__class__.__name__}: {exc}"
        except (OSError, ValueError, TimeoutError):
            return None  # not a TLS problem: the client's own error says it
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return None

    def describe(self) -> str:
        """For error messages: where and how, never who or with what secret."""
        how = self.security.protocol + (f"/{self.security.sasl_mechanism}" if self.security.uses_sasl else "")
        return f"KAFKA_BOOTSTRAP_SERVERS={self.bootstrap_servers!r} ({how})"
