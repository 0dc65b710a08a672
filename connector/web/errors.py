"""Every error answer is JSON with a machine-readable code and a human message."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from connector.errors import ConnectorError

log = logging.getLogger(__name__)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ConnectorError)
    def connector_error(error: ConnectorError):  # type: ignore[no-untyped-def]
        return jsonify(error.to_dict()), error.http_status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):  # type: ignore[no-untyped-def]
        code = (error.name or "error").lower().replace(" ", "_")
        return jsonify({"error": code, "message": error.description}), error.code

    @app.errorhandler(Exception)
    def unexpected(error: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled_error")
        return jsonify({"error": "internal_error", "message": "unexpected server error"}), 500
