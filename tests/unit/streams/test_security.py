"""Security settings from the environment reach every client's configuration.

Each test builds :class:`SecuritySettings` from an explicit environment, turns it into a
client configuration and hands that to the real client class (librdkafka, faust → aiokafka,
redis-py, libpq's parser) without connecting anywhere. Certificates are made with the
``openssl`` command (Debian's ``ca-certificates`` depends on it).
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from streams.config import ConfigError, settings_table
from streams.security import (
    SECURITY_ENV_NAMES,
    SecuritySettings,
    faust_app_settings,
    kafka_confluent_config,
    kafka_ssl_context,
    postgres_conninfo,
    redact_url,
    redis_client_kwargs,
    security_settings_table,
)

SASL_SECRET = "sasl-Secret-7f3a"
KEY_SECRET = "key-Secret-91bc"
REDIS_SECRET = "redis-Secret-c0de"
PG_SECRET = "pg-Secret-5eed"
SECRETS = (SASL_SECRET, KEY_SECRET, REDIS_SECRET, PG_SECRET)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA certificate, a client certificate with its key, and the same key encrypted."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=30)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=loopwise-ca")
    run("req", "-x509", *ec, "-keyout", "client.key", "-out", "client.pem", "-subj", "/CN=lw")
    run("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_SECRET}", "-out", "enc.key")
    return {name: str(d / name) for name in ("ca.pem", "client.pem", "client.key", "enc.key")}


def _confluent_accepts(conf: dict[str, str]) -> None:
    """librdkafka validates every key and loads the TLS files when a client is created."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": "127.0.0.1:1", "log_level": 0, **conf})
    producer.flush(0)


def _faust_auth(env_sec: SecuritySettings) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(credentials, consumer auth kwargs, producer auth kwargs) as faust builds them."""
    import aiokafka
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    async def build() -> tuple[Any, dict[str, Any], dict[str, Any]]:
        app = faust.App(
            "loopwise-security-test",
            broker="kafka://127.0.0.1:1",
            store="memory://",
            **faust_app_settings(env_sec.kafka),
        )
        consumer_auth = dict(
            credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context)
        )
        producer_auth = dict(app.producer._settings_auth())
        # aiokafka checks protocol, mechanism, credentials and context when a client is built.
        client = aiokafka.AIOKafkaClient(bootstrap_servers="127.0.0.1:1", **consumer_auth)
        await client.close()
        return app.conf.broker_credentials, consumer_auth, producer_auth

    return asyncio.run(build())


# --- defaults -------------------------------------------------------------------------------


def test_defaults_are_plaintext_and_change_nothing() -> None:
    sec = SecuritySettings.from_env({})
    assert kafka_confluent_config(sec.kafka) == {"security.protocol": "PLAINTEXT"}
    assert faust_app_settings(sec.kafka) == {}
    assert kafka_ssl_context(sec.kafka) is None
    assert redis_client_kwargs(sec.redis) == {}
    url = "postgresql://loopwise:loopwise@127.0.0.1:5440/loopwise"
    assert postgres_conninfo(url, sec.postgres) == url
    _confluent_accepts(kafka_confluent_config(sec.kafka))
    credentials, consumer_auth, producer_auth = _faust_auth(sec)
    assert credentials is None
    assert consumer_auth == {"security_protocol": "PLAINTEXT"} == producer_auth


# --- Kafka ----------------------------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kafka_sasl_ssl_scram_reaches_confluent_and_faust(
    pki: dict[str, str], mechanism: str
) -> None:
    sec = SecuritySettings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",  # case-insensitive
            "KAFKA_SASL_MECHANISM": mechanism.lower(),
            "KAFKA_SASL_USERNAME": "loopwise",
            "KAFKA_SASL_PASSWORD": SASL_SECRET,
            "KAFKA_SSL_CA_FILE": pki["ca.pem"],
        }
    )
    conf = kafka_confluent_config(sec.kafka)
    assert conf == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": mechanism,
        "sasl.username": "loopwise",
        "sasl.password": SASL_SECRET,
        "ssl.ca.location": pki["ca.pem"],
        "ssl.endpoint.identification.algorithm": "https",
    }
    _confluent_accepts(conf)

    credentials, consumer_auth, producer_auth = _faust_auth(sec)
    assert type(credentials).__name__ == "SASLCredentials"
    for auth in (consumer_auth, producer_auth):
        assert auth["security_protocol"] == "SASL_SSL"
        assert auth["sasl_mechanism"] == mechanism
        assert auth["sasl_plain_username"] == "loopwise"
        assert auth["sasl_plain_password"] == SASL_SECRET
        context = auth["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        subjects = [c["subject"] for c in context.get_ca_certs()]
        assert ((("commonName", "loopwise-ca"),),) in subjects  # our CA, not the system's


def test_kafka_sasl_plaintext_has_no_tls_and_defaults_to_scram_sha_512() -> None:
    sec = SecuritySettings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_USERNAME": "loopwise",
            "KAFKA_SASL_PASSWORD": SASL_SECRET,
        }
    )
    conf = kafka_confluent_config(sec.kafka)
    assert conf["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert not any(key.startswith("ssl.") for key in conf)
    _confluent_accepts(conf)
    _, consumer_auth, producer_auth = _faust_auth(sec)
    for auth in (consumer_auth, producer_auth):
        assert auth["security_protocol"] == "SASL_PLAINTEXT"
        assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
        assert auth["ssl_context"] is None


@needs_openssl
def test_kafka_mutual_tls_with_encrypted_key(pki: dict[str, str]) -> None:
    sec = SecuritySettings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_FILE": pki["ca.pem"],
            "KAFKA_SSL_CERT_FILE": pki["client.pem"],
            "KAFKA_SSL_KEY_FILE": pki["enc.key"],
            "KAFKA_SSL_KEY_PASSWORD": KEY_SECRET,
            "KAFKA_SSL_CHECK_HOSTNAME": "false",
        }
    )
    conf = kafka_confluent_config(sec.kafka)
    assert conf == {
        "security.protocol": "SSL",
        "ssl.ca.location": pki["ca.pem"],
        "ssl.certificate.location": pki["client.pem"],
        "ssl.key.location": pki["enc.key"],
        "ssl.key.password": KEY_SECRET,
        "ssl.endpoint.identification.algorithm": "none",
    }
    _confluent_accepts(conf)  # librdkafka decrypts the key with the password here
    credentials, consumer_auth, producer_auth = _faust_auth(sec)
    assert type(credentials).__name__ == "SSLCredentials"
    for auth in (consumer_auth, producer_auth):
        assert auth["security_protocol"] == "SSL"
        assert isinstance(auth["ssl_context"], ssl.SSLContext)
        assert auth["ssl_context"].check_hostname is False
        assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED  # still verifies the CA


@needs_openssl
def test_kafka_wrong_key_password_fails_when_the_context_is_built(pki: dict[str, str]) -> None:
    sec = SecuritySettings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CERT_FILE": pki["client.pem"],
            "KAFKA_SSL_KEY_FILE": pki["enc.key"],
            "KAFKA_SSL_KEY_PASSWORD": "wrong",
        }
    )
    with pytest.raises(ssl.SSLError):
        kafka_ssl_context(sec.kafka)


def test_kafka_ssl_without_ca_uses_the_system_trust_store() -> None:
    sec = SecuritySettings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert kafka_confluent_config(sec.kafka) == {
        "security.protocol": "SSL",
        "ssl.endpoint.identification.algorithm": "https",
    }
    context = kafka_ssl_context(sec.kafka)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED


# --- Redis ----------------------------------------------------------------------------------


def test_redis_password_from_env_reaches_the_client() -> None:
    import redis.asyncio as aioredis

    env = {"REDIS_URL": "redis://redis:6379/0", "REDIS_PASSWORD": REDIS_SECRET}
    sec = SecuritySettings.from_env(env)
    kwargs = redis_client_kwargs(sec.redis)
    assert kwargs == {"password": REDIS_SECRET}
    client = aioredis.Redis.from_url(env["REDIS_URL"], **kwargs)
    assert client.connection_pool.connection_kwargs["password"] == REDIS_SECRET


def test_redis_password_in_url_is_accepted_alone_or_when_equal() -> None:
    url = f"redis://:{REDIS_SECRET}@redis:6379/0"
    assert redis_client_kwargs(SecuritySettings.from_env({"REDIS_URL": url}).redis) == {}
    same = SecuritySettings.from_env({"REDIS_URL": url, "REDIS_PASSWORD": REDIS_SECRET})
    assert redis_client_kwargs(same.redis) == {"password": REDIS_SECRET}


@needs_openssl
def test_redis_tls_with_ca_and_client_cert_reaches_sync_and_async_clients(
    pki: dict[str, str],
) -> None:
    import redis
    import redis.asyncio as aioredis

    env = {
        "REDIS_URL": "rediss://redis.example:6380/0",
        "REDIS_USERNAME": "loopwise",
        "REDIS_PASSWORD": REDIS_SECRET,
        "REDIS_SSL_CA_FILE": pki["ca.pem"],
        "REDIS_SSL_CERT_FILE": pki["client.pem"],
        "REDIS_SSL_KEY_FILE": pki["client.key"],
    }
    sec = SecuritySettings.from_env(env)
    kwargs = redis_client_kwargs(sec.redis)
    assert kwargs == {
        "username": "loopwise",
        "password": REDIS_SECRET,
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": True,
        "ssl_ca_certs": pki["ca.pem"],
        "ssl_certfile": pki["client.pem"],
        "ssl_keyfile": pki["client.key"],
    }
    for module in (aioredis, redis):
        client = module.Redis.from_url(env["REDIS_URL"], **kwargs)
        connection = client.connection_pool.make_connection()
        assert type(connection).__name__ == "SSLConnection"
        context = connection.ssl_context if module is aioredis else None
        if context is not None:  # asyncio: the context is built (files loaded) right here
            built = context.get()
            assert built.verify_mode == ssl.CERT_REQUIRED and built.check_hostname
        assert connection.username == "loopwise" and connection.password == REDIS_SECRET


# --- PostgreSQL -----------------------------------------------------------------------------


@needs_openssl
def test_postgres_tls_parameters_are_added_to_the_conninfo(pki: dict[str, str]) -> None:
    url = f"postgresql://loopwise:{PG_SECRET}@db.example:5432/loopwise"
    sec = SecuritySettings.from_env(
        {
            "DATABASE_URL": url,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": pki["ca.pem"],
            "PGSSLCERT": pki["client.pem"],
            "PGSSLKEY": pki["client.key"],
        }
    )
    params = conninfo_to_dict(postgres_conninfo(url, sec.postgres))  # libpq's own parser
    assert params == {
        "user": "loopwise",
        "password": PG_SECRET,
        "host": "db.example",
        "port": "5432",
        "dbname": "loopwise",
        "sslmode": "verify-full",
        "sslrootcert": pki["ca.pem"],
        "sslcert": pki["client.pem"],
        "sslkey": pki["client.key"],
    }


def test_postgres_system_root_and_matching_url_value_are_accepted() -> None:
    url = "postgresql://loopwise@db.example/loopwise?sslmode=verify-full"
    sec = SecuritySettings.from_env(
        {"DATABASE_URL": url, "PGSSLMODE": "verify-full", "PGSSLROOTCERT": "system"}
    )
    params = conninfo_to_dict(postgres_conninfo(url, sec.postgres))
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == "system"


# --- invalid combinations -------------------------------------------------------------------

_BAD = "/nonexistent/loopwise/ca.pem"
_EXISTS = str(Path(__file__).resolve())  # any readable regular file
_SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (_SASL, "KAFKA_SASL_PASSWORD is required with KAFKA_SECURITY_PROTOCOL=SASL_SSL"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": SASL_SECRET},
            "KAFKA_SASL_USERNAME is required with KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT",
        ),
        (
            {**_SASL, "KAFKA_SASL_PASSWORD": SASL_SECRET, "KAFKA_SASL_MECHANISM": "GSSAPI"},
            "KAFKA_SASL_MECHANISM='GSSAPI': expected one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL='TLS': expected one of"),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": _BAD},
            f"KAFKA_SSL_CA_FILE='{_BAD}': no such file",
        ),
        ({"KAFKA_SSL_CA_FILE": _BAD}, "KAFKA_SSL_CA_FILE is set but KAFKA_SECURITY_PROTOCOL"),
        (
            {"KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": SASL_SECRET},
            "does not use SASL: set KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERT_FILE": _EXISTS},
            "KAFKA_SSL_CERT_FILE is set but KAFKA_SSL_KEY_FILE is not",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CHECK_HOSTNAME": "maybe"},
            "KAFKA_SSL_CHECK_HOSTNAME='maybe': expected true or false",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_FILE": "/"},
            "KAFKA_SSL_CA_FILE='/': not a regular file",
        ),
        ({"REDIS_SSL_CA_FILE": _EXISTS}, "use rediss://host:port/db"),
        (
            {"REDIS_URL": "rediss://r:6380/0", "REDIS_SSL_CA_FILE": _BAD},
            f"REDIS_SSL_CA_FILE='{_BAD}': no such file",
        ),
        (
            {"REDIS_URL": "redis://:one@r:6379/0", "REDIS_PASSWORD": REDIS_SECRET},
            "REDIS_PASSWORD and the password in REDIS_URL differ",
        ),
        ({"REDIS_USERNAME": "loopwise"}, "REDIS_USERNAME (or a user in REDIS_URL) needs"),
        ({"PGSSLMODE": "strict"}, "PGSSLMODE='strict': expected one of disable, allow"),
        ({"PGSSLMODE": "verify-ca"}, "sslmode=verify-ca verifies the server against a CA"),
        ({"PGSSLMODE": "require", "PGSSLROOTCERT": _BAD}, f"PGSSLROOTCERT='{_BAD}': no such"),
        (
            {"PGSSLMODE": "disable", "PGSSLROOTCERT": "system"},
            "PGSSLROOTCERT (or sslrootcert in DATABASE_URL) is set but sslmode=disable",
        ),
        (
            {"DATABASE_URL": "postgresql://u@h/db?sslmode=disable", "PGSSLMODE": "require"},
            "PGSSLMODE='require' but DATABASE_URL has sslmode='disable'",
        ),
        ({"PGSSLKEY": _EXISTS}, "PGSSLKEY is set but PGSSLCERT is not"),
    ],
)
def test_invalid_combinations_raise_clear_errors(
    env: dict[str, str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt to fall back on
    with pytest.raises(ConfigError) as info:
        SecuritySettings.from_env(env)
    text = str(info.value)
    assert text.startswith("invalid security configuration:")
    assert message in text
    assert not any(secret in text for secret in SECRETS)


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        SecuritySettings.from_env(
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "OAUTHBEARER",
                "REDIS_SSL_CA_FILE": _BAD,
                "PGSSLMODE": "nope",
            }
        )
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 5, lines  # mechanism, user, password, redis TLS, sslmode


# --- secrets stay out of reprs and messages -------------------------------------------------


@needs_openssl
def test_nothing_secret_is_in_a_repr(pki: dict[str, str]) -> None:
    sec = SecuritySettings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_USERNAME": "loopwise",
            "KAFKA_SASL_PASSWORD": SASL_SECRET,
            "KAFKA_SSL_CERT_FILE": pki["client.pem"],
            "KAFKA_SSL_KEY_FILE": pki["enc.key"],
            "KAFKA_SSL_KEY_PASSWORD": KEY_SECRET,
            "REDIS_URL": "rediss://r:6380/0",
            "REDIS_PASSWORD": REDIS_SECRET,
            "DATABASE_URL": f"postgresql://loopwise:{PG_SECRET}@db/loopwise",
            "PGSSLMODE": "require",
        }
    )
    for shown in (repr(sec), str(sec), repr(sec.kafka), repr(sec.redis), f"{sec.postgres}"):
        assert not any(secret in shown for secret in SECRETS), shown
    assert "sasl_password='***'" in repr(sec.kafka)
    assert "ssl_key_password='***'" in repr(sec.kafka)
    assert "password='***'" in repr(sec.redis)
    assert "username='loopwise'" in repr(sec.kafka)  # non-secrets stay visible
    # faust's own repr of the credentials shows the user only
    credentials = faust_app_settings(sec.kafka)["broker_credentials"]
    assert SASL_SECRET not in repr(credentials)


def test_redact_url_hides_only_the_password() -> None:
    assert (
        redact_url(f"postgresql://loopwise:{PG_SECRET}@db:5432/lw?sslmode=require")
        == "postgresql://loopwise:***@db:5432/lw?sslmode=require"
    )
    assert redact_url(f"rediss://:{REDIS_SECRET}@r:6380/0") == "rediss://:***@r:6380/0"
    assert redact_url("redis://r:6379/0") == "redis://r:6379/0"


def test_unparseable_database_url_does_not_echo_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        SecuritySettings.from_env({"DATABASE_URL": f"postgresql://u:{PG_SECRET}@h/db?bogus=1"})
    assert "DATABASE_URL=" in str(info.value) and PG_SECRET not in str(info.value)


def test_security_variables_are_documented_and_distinct_from_settings() -> None:
    names = [name for name, _, _ in security_settings_table()]
    assert len(names) == len(set(names)) == len(SECURITY_ENV_NAMES)
    assert not set(names) & {env for env, _, _ in settings_table()}
    docs = (Path(__file__).resolve().parents[3] / "docs" / "deploy.md").read_text()
    missing = [name for name in names if f"`{name}`" not in docs]
    assert not missing, f"docs/deploy.md does not document {missing}"
