"""Create the events topic when it is missing (the analytics worker, `up` and the tests)."""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)


async def ensure_topic(brokers: tuple[str, ...], topic: str, partitions: int = 3) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=",".join(brokers))
    await admin.start()
    try:
        existing = await admin.list_topics()
        if topic in existing:
            return
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                                replication_factor=1)])
            log.info("created topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
    finally:
        await admin.close()
