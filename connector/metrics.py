"""Prometheus metrics shared by every process.

Web and worker processes count events into Redis hashes (so `/metrics` on any web process sees
what every worker did); sync states are read from the database at scrape time. Counting never
raises: a metric lost while Redis is down must not fail a webhook or a step.

A counter without labels is exposed as 0 before anything is counted, so a fresh deployment's
scrape has it and `rate()` starts from a real zero. A labelled counter has no samples until a
label combination is first counted, as prometheus_client's own labelled counters do: its label
values (outcomes, webhook results, write results) are whatever the code counts, not a fixed list
worth repeating here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from connector.models import Sync
from connector.runtime import Runtime

log = logging.getLogger(__name__)
PREFIX = "connector:metrics:"
COUNTERS = {
    "api_calls": ("connector_api_calls_total", "Calls made to an outside API", ("service", "outcome")),
    "webhook_events": (
        "connector_webhook_events_total",
        "Webhook deliveries and events",
        ("source", "result"),
    ),
    "credits_spent": ("connector_credits_spent_total", "ApexVerify credits charged by launches", ()),
    "contacts_written": (
        "connector_contacts_written_total",
        "Contacts whose flags were written",
        ("crm", "result"),
    ),
}
STEP_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, float("inf"))


def count(connection: redis.Redis, name: str, amount: float = 1, **labels: str) -> None:
    try:
        connection.hincrbyfloat(PREFIX + name, json.dumps(labels, sort_keys=True), amount)
    except redis.exceptions.RedisError:
        log.debug("metric_not_counted", extra={"metric": name})


def call_outcome(http_status: int | None) -> str:
    if http_status is None or http_status >= 500:
        return "error"
    if http_status == 429:
        return "rate_limited"
    return "ok" if http_status < 400 else "client_error"


def observe_step(connection: redis.Redis, step: str, seconds: float) -> None:
    """One step's duration into a histogram (bucket counts, sum and count per step)."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            for bound in STEP_BUCKETS:
                if seconds <= bound:
                    pipe.hincrby(f"{PREFIX}step_seconds:{step}", str(bound), 1)
            pipe.hincrbyfloat(f"{PREFIX}step_seconds:{step}", "sum", seconds)
            pipe.sadd(f"{PREFIX}steps", step)
            pipe.execute()
    except redis.exceptions.RedisError:
        log.debug("metric_not_counted", extra={"metric": "step_seconds"})


class ConnectorCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator:
        yield self._sync_states()
        try:
            yield from self._counters()
            yield self._step_durations()
        except redis.exceptions.RedisError:
            log.warning("metrics_redis_unavailable")

    def _sync_states(self) -> GaugeMetricFamily:
        gauge = GaugeMetricFamily("connector_syncs", "Syncs by state", labels=("status",))
        with self.runtime.session() as session:
            for status, number in session.execute(select(Sync.status, func.count()).group_by(Sync.status)):
                gauge.add_metric([status], number)
        return gauge

    def _counters(self) -> Iterator[CounterMetricFamily]:
        for key, (name, documentation, label_names) in COUNTERS.items():
            family = CounterMetricFamily(name.removesuffix("_total"), documentation, labels=label_names)
            counted = self.runtime.redis.hgetall(PREFIX + key)
            if not label_names and not counted:
                family.add_metric([], 0.0)
            for raw_labels, value in counted.items():
                labels = json.loads(raw_labels)
                family.add_metric([labels.get(n, "") for n in label_names], float(value))
            yield family

    def _step_durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "connector_step_duration_seconds", "Time a sync spent in each step", labels=("step",)
        )
        for raw_step in self.runtime.redis.smembers(f"{PREFIX}steps"):
            step = raw_step.decode() if isinstance(raw_step, bytes) else raw_step
            data = {
                (k.decode() if isinstance(k, bytes) else k): float(v)
                for k, v in self.runtime.redis.hgetall(f"{PREFIX}step_seconds:{step}").items()
            }
            buckets = [("+Inf" if b == float("inf") else str(b), data.get(str(b), 0.0)) for b in STEP_BUCKETS]
            family.add_metric([step], buckets, data.get("sum", 0.0))
        return family
