"""Security settings of every client — Kafka, Redis, PostgreSQL — read from the environment.

One frozen :class:`SecuritySettings` is read with :meth:`SecuritySettings.from_env` and
validated as a whole: a bad combination (SASL without a password, an unknown mechanism, a CA
file that does not exist, TLS files with a plain ``redis://`` URL, …) stops the process with a
:class:`~streams.config.ConfigError` naming every offending variable. Secret values are never
part of an error message or of a ``repr``.

The functions below turn it into each client's own configuration:

=====================================  ==========================================================
:func:`kafka_confluent_config`         confluent-kafka / librdkafka keys (``security.protocol``,
                                       ``sasl.mechanisms``, ``ssl.ca.location``, …) to merge into
                                       every ``Producer``/``Consumer``/``AdminClient`` config
:func:`faust_app_settings`             ``faust.App(..., **faust_app_settings(sec.kafka))``:
                                       ``broker_credentials`` (``faust.SASLCredentials`` /
                                       ``faust.SSLCredentials``), which faust hands to aiokafka
:func:`kafka_ssl_context`              the ``ssl.SSLContext`` used by the faust/aiokafka side
:func:`redis_client_kwargs`            keyword arguments for ``redis.Redis.from_url`` and
                                       ``redis.asyncio.Redis.from_url`` (``password``,
                                       ``ssl_ca_certs``, …)
:func:`postgres_conninfo_kwargs`       libpq parameters (``sslmode``, ``sslrootcert``, …)
:func:`postgres_conninfo`              ``DATABASE_URL`` merged with them, for psycopg / the pool
=====================================  ==========================================================

PostgreSQL uses libpq's own variable names (``PGSSLMODE``, ``PGSSLROOTCERT``, ``PGSSLCERT``,
``PGSSLKEY``), so ``psql`` in ``deploy/local/migrate.sh`` honours the same settings.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from streams.config import ConfigError, Settings

KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEFAULT_SASL_MECHANISM = "SCRAM-SHA-512"
PG_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")

# (variable, default shown in docs, meaning) — the docs table and the manifest tests use it.
SECURITY_SETTINGS: tuple[tuple[str, str, str], ...] = (
    (
        "KAFKA_SECURITY_PROTOCOL",
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL for every Kafka client",
    ),
    (
        "KAFKA_SASL_MECHANISM",
        DEFAULT_SASL_MECHANISM,
        "SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (only with a SASL_* protocol)",
    ),
    ("KAFKA_SASL_USERNAME", "", "SASL user (required with a SASL_* protocol)"),
    ("KAFKA_SASL_PASSWORD", "", "SASL password (required with a SASL_* protocol; secret)"),
    ("KAFKA_SSL_CA_FILE", "", "PEM CA bundle for the brokers' certificates (default: system CAs)"),
    ("KAFKA_SSL_CERT_FILE", "", "PEM client certificate for mutual TLS (with KAFKA_SSL_KEY_FILE)"),
    ("KAFKA_SSL_KEY_FILE", "", "PEM client private key for mutual TLS"),
    ("KAFKA_SSL_KEY_PASSWORD", "", "password of an encrypted KAFKA_SSL_KEY_FILE (secret)"),
    ("KAFKA_SSL_CHECK_HOSTNAME", "true", "verify that the broker certificate names the host"),
    ("REDIS_USERNAME", "", "Redis ACL user (or user in REDIS_URL)"),
    ("REDIS_PASSWORD", "", "Redis AUTH password (or password in REDIS_URL; secret)"),
    ("REDIS_SSL_CA_FILE", "", "PEM CA bundle for Redis TLS (needs a rediss:// REDIS_URL)"),
    ("REDIS_SSL_CERT_FILE", "", "PEM client certificate for Redis mutual TLS"),
    ("REDIS_SSL_KEY_FILE", "", "PEM client private key for Redis mutual TLS"),
    ("REDIS_SSL_CHECK_HOSTNAME", "true", "verify that the Redis certificate names the host"),
    ("PGSSLMODE", "(libpq: prefer)", "disable, allow, prefer, require, verify-ca, verify-full"),
    ("PGSSLROOTCERT", "", "PEM CA bundle for PostgreSQL (or 'system'); needed by verify-*"),
    ("PGSSLCERT", "", "PEM client certificate for PostgreSQL (with PGSSLKEY)"),
    ("PGSSLKEY", "", "PEM client private key for PostgreSQL"),
)
SECURITY_ENV_NAMES = frozenset(name for name, _, _ in SECURITY_SETTINGS)

_SECRET_FIELDS = frozenset({"sasl_password", "ssl_key_password", "password"})


def security_settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, description) rows, like :func:`streams.config.settings_table`."""
    return list(SECURITY_SETTINGS)


def _masked_repr(obj: Any) -> str:
    parts = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in _SECRET_FIELDS and value is not None:
            parts.append(f"{f.name}='***'")
        else:
            parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def redact_url(url: str) -> str:
    """``scheme://user:secret@host/db`` → ``scheme://user:***@host/db``, for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True, repr=False)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_key_password: str | None = None
    ssl_check_hostname: bool = True

    @property
    def uses_sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def __repr__(self) -> str:
        return _masked_repr(self)


@dataclass(frozen=True, repr=False)
class RedisSecurity:
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ssl_ca_file: str | None = None
    ssl_cert_file: str | None = None
    ssl_key_file: str | None = None
    ssl_check_hostname: bool = True

    def __repr__(self) -> str:
        return _masked_repr(self)


@dataclass(frozen=True, repr=False)
class PostgresSecurity:
    sslmode: str | None = None
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None

    def __repr__(self) -> str:
        return _masked_repr(self)


def _settings_default(name: str) -> str:
    for f in fields(Settings):
        if f.name == name:
            return str(f.metadata["default"])
    raise KeyError(name)  # pragma: no cover - programming error


class _Reader:
    """Reads variables from one mapping and collects every error before raising."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.errors: list[str] = []

    def get(self, name: str) -> str | None:
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return None
        return raw.strip()

    def secret(self, name: str) -> str | None:
        # Secrets are taken verbatim (a password may start or end with spaces) but "" is unset.
        raw = self.env.get(name)
        return raw if raw else None

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.get(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        self.errors.append(f"{name}={raw!r}: expected true or false")
        return default

    def choice(self, name: str, raw: str | None, allowed: tuple[str, ...]) -> str | None:
        if raw is None:
            return None
        if raw not in allowed:
            self.errors.append(f"{name}={raw!r}: expected one of {', '.join(allowed)}")
            return None
        return raw

    def file(self, name: str, path: str | None) -> None:
        if path is None:
            return
        p = Path(path)
        if not p.exists():
            self.errors.append(f"{name}={path!r}: no such file")
        elif not p.is_file():
            self.errors.append(f"{name}={path!r}: not a regular file")
        elif not os.access(p, os.R_OK):
            self.errors.append(f"{name}={path!r}: not readable by this process")

    def pair(self, cert_name: str, cert: str | None, key_name: str, key: str | None) -> None:
        if cert is not None and key is None:
            self.errors.append(f"{cert_name} is set but {key_name} is not: set both or neither")
        if key is not None and cert is None:
            self.errors.append(f"{key_name} is set but {cert_name} is not: set both or neither")


def _read_kafka(r: _Reader) -> KafkaSecurity:
    raw_protocol = r.get("KAFKA_SECURITY_PROTOCOL")
    protocol = r.choice(
        "KAFKA_SECURITY_PROTOCOL",
        raw_protocol.upper() if raw_protocol else "PLAINTEXT",
        KAFKA_PROTOCOLS,
    )
    raw_mechanism = r.get("KAFKA_SASL_MECHANISM")
    mechanism = r.choice(
        "KAFKA_SASL_MECHANISM", raw_mechanism.upper() if raw_mechanism else None, SASL_MECHANISMS
    )
    username = r.get("KAFKA_SASL_USERNAME")
    password = r.secret("KAFKA_SASL_PASSWORD")
    ca = r.get("KAFKA_SSL_CA_FILE")
    cert = r.get("KAFKA_SSL_CERT_FILE")
    key = r.get("KAFKA_SSL_KEY_FILE")
    key_password = r.secret("KAFKA_SSL_KEY_PASSWORD")
    check_hostname = r.boolean("KAFKA_SSL_CHECK_HOSTNAME", True)
    if protocol is None:
        return KafkaSecurity()

    shown = f"KAFKA_SECURITY_PROTOCOL={protocol}"
    if protocol.startswith("SASL_"):
        if username is None:
            r.errors.append(f"KAFKA_SASL_USERNAME is required with {shown}")
        if password is None:
            r.errors.append(f"KAFKA_SASL_PASSWORD is required with {shown}")
        if mechanism is None and raw_mechanism is None:
            mechanism = DEFAULT_SASL_MECHANISM
    else:
        for name, value in (
            ("KAFKA_SASL_MECHANISM", raw_mechanism),
            ("KAFKA_SASL_USERNAME", username),
            ("KAFKA_SASL_PASSWORD", password),
        ):
            if value is not None:
                r.errors.append(
                    f"{name} is set but {shown} does not use SASL: "
                    "set KAFKA_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT)"
                )
    if protocol in ("SSL", "SASL_SSL"):
        r.file("KAFKA_SSL_CA_FILE", ca)
        r.file("KAFKA_SSL_CERT_FILE", cert)
        r.file("KAFKA_SSL_KEY_FILE", key)
        r.pair("KAFKA_SSL_CERT_FILE", cert, "KAFKA_SSL_KEY_FILE", key)
        if key_password is not None and key is None:
            r.errors.append("KAFKA_SSL_KEY_PASSWORD is set but KAFKA_SSL_KEY_FILE is not")
    else:
        for name, value in (
            ("KAFKA_SSL_CA_FILE", ca),
            ("KAFKA_SSL_CERT_FILE", cert),
            ("KAFKA_SSL_KEY_FILE", key),
            ("KAFKA_SSL_KEY_PASSWORD", key_password),
        ):
            if value is not None:
                r.errors.append(
                    f"{name} is set but {shown} does not use TLS: "
                    "set KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"
                )
    return KafkaSecurity(
        protocol=protocol,
        sasl_mechanism=mechanism if protocol.startswith("SASL_") else None,
        sasl_username=username,
        sasl_password=password,
        ssl_ca_file=ca,
        ssl_cert_file=cert,
        ssl_key_file=key,
        ssl_key_password=key_password,
        ssl_check_hostname=check_hostname,
    )


def _read_redis(r: _Reader, redis_url: str) -> RedisSecurity:
    try:
        parts = urlsplit(redis_url)
        url_user = unquote(parts.username) if parts.username else None
        url_password = unquote(parts.password) if parts.password else None
    except ValueError:
        r.errors.append("REDIS_URL: not a valid URL")
        return RedisSecurity()
    tls = parts.scheme == "rediss"
    username = r.get("REDIS_USERNAME")
    password = r.secret("REDIS_PASSWORD")
    ca = r.get("REDIS_SSL_CA_FILE")
    cert = r.get("REDIS_SSL_CERT_FILE")
    key = r.get("REDIS_SSL_KEY_FILE")
    check_hostname = r.boolean("REDIS_SSL_CHECK_HOSTNAME", True)

    if password is not None and url_password is not None and password != url_password:
        r.errors.append(
            "REDIS_PASSWORD and the password in REDIS_URL differ: set the password in one place"
        )
    if username is not None and url_user is not None and username != url_user:
        r.errors.append(
            f"REDIS_USERNAME={username!r} and the user in REDIS_URL ({url_user!r}) differ"
        )
    if (username or url_user) and not (password or url_password):
        r.errors.append("REDIS_USERNAME (or a user in REDIS_URL) needs REDIS_PASSWORD")
    if tls:
        r.file("REDIS_SSL_CA_FILE", ca)
        r.file("REDIS_SSL_CERT_FILE", cert)
        r.file("REDIS_SSL_KEY_FILE", key)
        r.pair("REDIS_SSL_CERT_FILE", cert, "REDIS_SSL_KEY_FILE", key)
    else:
        for name, value in (
            ("REDIS_SSL_CA_FILE", ca),
            ("REDIS_SSL_CERT_FILE", cert),
            ("REDIS_SSL_KEY_FILE", key),
        ):
            if value is not None:
                r.errors.append(
                    f"{name} is set but REDIS_URL is {parts.scheme}://, not TLS: "
                    "use rediss://host:port/db"
                )
    return RedisSecurity(
        tls=tls,
        username=username,
        password=password,
        ssl_ca_file=ca,
        ssl_cert_file=cert,
        ssl_key_file=key,
        ssl_check_hostname=check_hostname,
    )


def _read_postgres(r: _Reader, database_url: str) -> PostgresSecurity:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        in_url = {k: str(v) for k, v in conninfo_to_dict(database_url).items()}
    except ProgrammingError:
        # The message of a parse error may quote the URL, password included: do not show it.
        r.errors.append(f"DATABASE_URL={redact_url(database_url)!r}: not a valid connection URL")
        in_url = {}
    env = {
        "sslmode": r.choice("PGSSLMODE", r.get("PGSSLMODE"), PG_SSLMODES),
        "sslrootcert": r.get("PGSSLROOTCERT"),
        "sslcert": r.get("PGSSLCERT"),
        "sslkey": r.get("PGSSLKEY"),
    }
    effective: dict[str, str | None] = {}
    for param, value in env.items():
        var = f"PG{param.upper()}"
        url_value = in_url.get(param)
        if value is not None and url_value is not None and value != url_value:
            r.errors.append(
                f"{var}={value!r} but DATABASE_URL has {param}={url_value!r}: set it in one place"
            )
        effective[param] = value if value is not None else url_value

    mode = effective["sslmode"]
    root, cert, key = effective["sslrootcert"], effective["sslcert"], effective["sslkey"]
    if mode == "disable":
        for param in ("sslrootcert", "sslcert", "sslkey"):
            if effective[param] is not None:
                r.errors.append(
                    f"PG{param.upper()} (or {param} in DATABASE_URL) is set but sslmode=disable"
                )
    if root != "system":
        r.file("PGSSLROOTCERT", root)
    r.file("PGSSLCERT", cert)
    r.file("PGSSLKEY", key)
    r.pair("PGSSLCERT", cert, "PGSSLKEY", key)
    if mode in ("verify-ca", "verify-full") and root is None:
        default_root = Path.home() / ".postgresql" / "root.crt"
        if not default_root.is_file():
            r.errors.append(
                f"sslmode={mode} verifies the server against a CA: set PGSSLROOTCERT to a PEM "
                f"file (or 'system'); {default_root} does not exist"
            )
    return PostgresSecurity(
        sslmode=env["sslmode"],
        sslrootcert=env["sslrootcert"],
        sslcert=env["sslcert"],
        sslkey=env["sslkey"],
    )


@dataclass(frozen=True)
class SecuritySettings:
    """Security settings of every client. Build with :meth:`from_env`."""

    kafka: KafkaSecurity = field(default_factory=KafkaSecurity)
    redis: RedisSecurity = field(default_factory=RedisSecurity)
    postgres: PostgresSecurity = field(default_factory=PostgresSecurity)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SecuritySettings:
        """Read and validate every security variable of ``environ`` (default ``os.environ``).

        ``REDIS_URL`` and ``DATABASE_URL`` are read too (with :class:`Settings`' defaults) to
        check them against the separate variables.
        """
        env = os.environ if environ is None else environ
        r = _Reader(env)
        redis_url = env.get("REDIS_URL") or _settings_default("redis_url")
        database_url = env.get("DATABASE_URL") or _settings_default("database_url")
        result = cls(
            kafka=_read_kafka(r),
            redis=_read_redis(r, redis_url),
            postgres=_read_postgres(r, database_url),
        )
        if r.errors:
            raise ConfigError("invalid security configuration:\n  " + "\n  ".join(r.errors))
        return result


# --- Kafka: confluent-kafka (librdkafka) -------------------------------------------------


def kafka_confluent_config(sec: KafkaSecurity) -> dict[str, str]:
    """librdkafka keys to merge into every confluent-kafka client configuration."""
    conf: dict[str, str] = {"security.protocol": sec.protocol}
    if sec.uses_sasl:
        conf["sasl.mechanisms"] = sec.sasl_mechanism or DEFAULT_SASL_MECHANISM
        conf["sasl.username"] = sec.sasl_username or ""
        conf["sasl.password"] = sec.sasl_password or ""
    if sec.uses_ssl:
        if sec.ssl_ca_file:
            conf["ssl.ca.location"] = sec.ssl_ca_file
        if sec.ssl_cert_file:
            conf["ssl.certificate.location"] = sec.ssl_cert_file
        if sec.ssl_key_file:
            conf["ssl.key.location"] = sec.ssl_key_file
        if sec.ssl_key_password:
            conf["ssl.key.password"] = sec.ssl_key_password
        conf["ssl.endpoint.identification.algorithm"] = (
            "https" if sec.ssl_check_hostname else "none"
        )
    return conf


# --- Kafka: faust-streaming (aiokafka) ---------------------------------------------------


def kafka_ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    """The client TLS context for aiokafka, or None without TLS. Loads the files now."""
    if not sec.uses_ssl:
        return None
    context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=sec.ssl_ca_file)
    if sec.ssl_cert_file:
        context.load_cert_chain(
            sec.ssl_cert_file, keyfile=sec.ssl_key_file, password=sec.ssl_key_password
        )
    context.check_hostname = sec.ssl_check_hostname
    return context


def faust_broker_credentials(sec: KafkaSecurity) -> Any:
    """``faust.SASLCredentials`` / ``faust.SSLCredentials`` for ``broker_credentials``.

    None for PLAINTEXT. For SASL_SSL the TLS context travels inside the SASL credentials
    (faust derives the protocol SASL_SSL from its presence).
    """
    import faust

    if sec.protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(sec)
    if sec.protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=sec.sasl_username,
        password=sec.sasl_password,
        mechanism=sec.sasl_mechanism or DEFAULT_SASL_MECHANISM,
        ssl_context=context,
    )


def faust_app_settings(sec: KafkaSecurity) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``: ``{"broker_credentials": ...}`` or ``{}``."""
    credentials = faust_broker_credentials(sec)
    return {} if credentials is None else {"broker_credentials": credentials}


# --- Redis (redis-py, sync and asyncio) --------------------------------------------------


def redis_client_kwargs(sec: RedisSecurity) -> dict[str, Any]:
    """Keyword arguments for ``Redis.from_url(REDIS_URL, **kwargs)``.

    Values in the URL itself (a password, ``?ssl_cert_reqs=``) take precedence in redis-py;
    :meth:`SecuritySettings.from_env` refuses a password that differs between the two.
    """
    kwargs: dict[str, Any] = {}
    if sec.username is not None:
        kwargs["username"] = sec.username
    if sec.password is not None:
        kwargs["password"] = sec.password
    if sec.tls:
        kwargs["ssl_cert_reqs"] = "required"
        kwargs["ssl_check_hostname"] = sec.ssl_check_hostname
        if sec.ssl_ca_file:
            kwargs["ssl_ca_certs"] = sec.ssl_ca_file
        if sec.ssl_cert_file:
            kwargs["ssl_certfile"] = sec.ssl_cert_file
        if sec.ssl_key_file:
            kwargs["ssl_keyfile"] = sec.ssl_key_file
    return kwargs


# --- PostgreSQL (psycopg / libpq) --------------------------------------------------------


def postgres_conninfo_kwargs(sec: PostgresSecurity) -> dict[str, str]:
    """libpq parameters from the environment (``sslmode``, ``sslrootcert``, …) that are set."""
    return {
        name: value
        for name, value in (
            ("sslmode", sec.sslmode),
            ("sslrootcert", sec.sslrootcert),
            ("sslcert", sec.sslcert),
            ("sslkey", sec.sslkey),
        )
        if value is not None
    }


def postgres_conninfo(database_url: str, sec: PostgresSecurity) -> str:
    """``DATABASE_URL`` with the TLS parameters added: a conninfo for psycopg and its pool.

    The URL is returned unchanged when nothing is set. The result may hold the password:
    log :func:`redact_url` of the URL instead.
    """
    extra = postgres_conninfo_kwargs(sec)
    if not extra:
        return database_url
    from psycopg.conninfo import make_conninfo

    return make_conninfo(database_url, **extra)


@functools.cache
def current() -> SecuritySettings:
    """The process's security settings, read once from the environment."""
    return SecuritySettings.from_env()


def confluent_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """A complete confluent-kafka client configuration with the security settings applied."""
    return {"bootstrap.servers": bootstrap, **kafka_confluent_config(current().kafka), **extra}
