"""The runtime of the app handling the current request (set by the app factory)."""

from __future__ import annotations

from flask import current_app

from connector.runtime import Runtime


def current_runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["connector"]
    return runtime
