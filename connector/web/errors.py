"""Every error answer is JSON with a machine-readable code and a human message."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from connector.errors import ConnectorError

log = logging.getLogger(__name__)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ConnectorError)
    def connector_error(error: ConnectorError) -> ResponseReturnValue:
        return jsonify(error.to_dict()), error.http_status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ResponseReturnValue:
        code = (error.name or "error").lower().replace(" ", "_")
        response = jsonify({"error": code, "message": error.description})
        if error.code is not None:  # as Flask treats a status of None: the response's own is kept
            response.status_code = error.code
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> ResponseReturnValue:
        log.exception("unhandled_error")
        return jsonify({"error": "internal_error", "message": "unexpected server error"}), 500
