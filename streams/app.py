"""The one faust App of Loopwise, its topics and tables, and the worker's shared resources.

Everything else imports ``app`` from here; agents live in ``agents/`` and are imported
explicitly by :mod:`loopwise.worker` (no autodiscovery).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import faust
from faust.types import TopicT

from streams import faults
from streams.admission import Admission
from streams.catalog import ItemCatalog
from streams.config import Settings
from streams.fast_producer import FastProducer
from streams.fetching import RewindingTransport
from streams.partitioning import broker_counts
from streams.recovery import LoopwiseTableManager
from streams.security import (
    confluent_config,
    faust_app_settings,
    postgres_conninfo,
    redis_client_kwargs,
)
from streams.security import current as current_security
from streams.sinks.postgres_sink import PostgresRecords
from streams.sinks.redis_sink import RedisLatestValues
from streams.topics import get_topic

log = logging.getLogger(__name__)

settings = Settings.from_env()
security = current_security()
faults.configure(settings.faults, settings.fault_seed)


class LoopwiseApp(faust.App):
    """faust's App with a consumer that never skips fetched records (streams.fetching)."""

    def _new_transport(self) -> RewindingTransport:
        return RewindingTransport(self.conf.broker_consumer, self)


app = LoopwiseApp(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap_servers}",
    # The memory store rebuilds tables from their changelogs on start; the changelog, not
    # local disk, is the source of truth (docs/guarantees.md).
    store="memory://",
    datadir=str(settings.data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    processing_guarantee="at_least_once",
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    # One record-size limit for every producer and topic (LOOPWISE_MAX_MESSAGE_BYTES).
    producer_max_request_size=settings.max_record_bytes,
    broker_commit_every=10_000,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=settings.session_timeout_s / 4,
    broker_commit_interval=timedelta(seconds=1.0),
    stream_buffer_maxsize=8192,
    web_enabled=True,
    # faust's /table/ views serve raw table values without authentication; the /state/
    # endpoints are the supported reads.
    web_tables_enabled=False,
    web_bind=settings.web_host,
    web_port=settings.web_port,
    web_host=settings.web_host,
    table_standby_replicas=0,
    # Seeks stream partitions before resuming them after recovery (see streams.recovery).
    TableManager=LoopwiseTableManager,
    key_serializer="raw",
    value_serializer="raw",
    **faust_app_settings(security.kafka),
)


def topic(*names: str) -> TopicT:
    """A faust topic of raw bytes over one or more registry names (decoded by the agent)."""
    specs = [get_topic(n) for n in names]
    partitions = {s.partitions(settings) for s in specs}
    if len(partitions) != 1:
        raise ValueError(f"topics {names} have different partition counts: {partitions}")
    return app.topic(
        *(settings.topic(n) for n in names),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions.pop(),
        replicas=settings.replication_factor,
        # Applies when faust creates the topic; `loopwise topics create` sets it on all.
        config={"max.message.bytes": str(settings.max_record_bytes)},
    )


deadletter_topic = topic("deadletter")
# Written by several agents: one topic object each.
actions_topic = topic("actions")
alerts_topic = topic("alerts")
# The partition and event-time checks of every input record (streams.admission).
admission = Admission(
    settings, broker_counts(confluent_config(settings.kafka_bootstrap_servers, log_level=0))
)

preferences_table = app.Table(
    "preferences", default=None, key_type=str, value_type=bytes, partitions=settings.partitions
)
# Values are packed bytes (agents.preferences.state); faust derives "json" from the type, so
# set the changelog's value codec before the changelog topic is first built.
preferences_table.value_serializer = "raw"

catalog = ItemCatalog(
    settings.kafka_bootstrap_servers,
    settings.topic("items"),
    settings.item_dim,
    settings.max_message_bytes,
    admission,
)
redis_values = RedisLatestValues(
    settings.redis_url,
    key_prefix=f"{settings.topic_prefix}",
    max_backoff_s=settings.sink_retry_max_s,
    **redis_client_kwargs(security.redis),
)
# The preferences agent's changelog records and outputs (streams.fast_producer).
fast_producer = FastProducer(settings)
postgres = PostgresRecords(
    postgres_conninfo(settings.database_url, security.postgres),
    max_backoff_s=settings.sink_retry_max_s,
)


@app.on_before_configured.connect
def _log_settings(app: faust.App, **kwargs: object) -> None:  # pragma: no cover - logging
    log.info("loopwise settings: %s; security: %r", settings, security)


class Resources(faust.Service):
    """Starts and stops the worker's non-Kafka resources with the app."""

    async def on_start(self) -> None:
        catalog.start()
        await postgres.open()

    async def on_stop(self) -> None:
        catalog.stop()
        await asyncio.to_thread(fast_producer.close)
        await redis_values.close()
        await postgres.close()


resources = app.service(Resources)
