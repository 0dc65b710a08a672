"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from flask.typing import ResponseReturnValue
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import text

from connector.metrics import ConnectorCollector
from connector.runtime import Runtime
from connector.web.context import current_runtime

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz() -> ResponseReturnValue:
    runtime = current_runtime()
    checks: dict[str, str] = {}
    try:
        with runtime.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as error:  # any failure means "not ready", reported by type only
        checks["database"] = f"unavailable: {type(error).__name__}"
    try:
        runtime.redis.ping()
        checks["redis"] = "ok"
    except Exception as error:
        checks["redis"] = f"unavailable: {type(error).__name__}"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), 200 if ready else 503


@health.get("/metrics")
def metrics() -> Response:
    registry = current_app.extensions.setdefault("connector_metrics", _registry(current_runtime()))
    # content_type, not mimetype: Flask appends "; charset=utf-8" to a mimetype, and this one has it.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _registry(runtime: Runtime) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(ConnectorCollector(runtime))
    return registry
