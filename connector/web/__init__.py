"""The Flask app factory: small on purpose; each concern is a blueprint of its own."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from connector.config import Settings
from connector.crm.registry import check_settings
from connector.errors import ConnectorError
from connector.logs import configure_logging
from connector.runtime import Runtime, build_runtime, set_runtime
from connector.web.admin import admin
from connector.web.context import current_runtime
from connector.web.errors import register_error_handlers
from connector.web.health import health
from connector.web.openapi import openapi
from connector.web.ops import init_ops_page
from connector.web.webhooks import webhooks


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Flask:
    settings = settings or (runtime.settings if runtime else Settings.from_env())
    check_settings(settings)  # a malformed CRM variable stops the app at start, not mid-request
    configure_logging(settings.log_level, settings.secrets())
    runtime = runtime or build_runtime(settings)
    set_runtime(runtime)

    app = Flask(__name__)
    if settings.trusted_proxy_count:
        # request.remote_addr becomes the client the outermost trusted proxy saw (the sign-in throttle's
        # key); scheme, host and path are left as they are (see ops.ProxyAwareSessionInterface).
        proxies = settings.trusted_proxy_count
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=0, x_host=0, x_port=0, x_prefix=0
        )
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["connector"] = runtime

    register_error_handlers(app)
    app.register_blueprint(health)
    app.register_blueprint(webhooks)
    app.register_blueprint(admin)
    app.register_blueprint(openapi)
    init_ops_page(app, runtime.settings)  # the HTML ops page: its blueprint, session cookie and secret key
    return app


__all__ = ["ConnectorError", "create_app", "current_runtime"]
