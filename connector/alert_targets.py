"""Sending one alert to one target: a signed JSON webhook, a Slack incoming webhook, or email.

Why a module of its own, in the core: delivering needs only the settings and the network, and
both the pipeline (alerts raised by a sync, retried by the cron tick) and the ops page's test
button send through it. What to send and when is connector.pipeline.alerts' business.

Every send either returns or raises `AlertNotSent`, whose message names the target and what went
wrong but never the URL past its origin: a Slack webhook URL is a credential in itself, and so is
the password in SMTP_URL. Each try is short (`alert_timeout_seconds`), follows no redirect (the
signed body must not be replayed to wherever a 3xx points) and is made once: retrying is the
caller's, with backoff, from the database.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import smtplib
import ssl
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import requests

from connector.config import Settings
from connector.errors import ConnectorError
from connector.outbound import describe_origin

TARGETS = ("webhook", "slack", "email")
SIGNATURE_HEADER = "X-Connector-Signature"
DEFAULT_PORTS = {"smtp": 587, "smtps": 465}


class AlertNotSent(ConnectorError):
    """One target did not take the alert this time (unreachable, refused, misconfigured)."""


def configured_targets(settings: Settings) -> list[str]:
    """The targets alerts go to, in TARGETS order: email needs both ALERT_EMAIL_TO and SMTP_URL."""
    configured = {
        "webhook": bool(settings.alert_webhook_url),
        "slack": bool(settings.alert_slack_webhook_url),
        "email": bool(settings.alert_email_to and settings.smtp_url),
    }
    return [name for name in TARGETS if configured[name]]


def alert_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes posted to the webhook, which its signature covers."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def signature(secret: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, the X-Connector-Signature header's value."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_alert(settings: Settings, target: str, payload: dict[str, Any]) -> None:
    """Deliver `payload` to `target` once; AlertNotSent when it did not take it."""
    if target == "webhook":
        _send_webhook(settings, payload)
    elif target == "slack":
        _send_slack(settings, payload)
    elif target == "email":
        _send_email(settings, payload)
    else:
        raise AlertNotSent("alert_target_unknown", f"no alert target called {target!r}")


def _send_webhook(settings: Settings, payload: dict[str, Any]) -> None:
    url = settings.alert_webhook_url or ""
    body = alert_body(payload)
    headers = {"Content-Type": "application/json"}
    if settings.alert_webhook_secret:
        headers[SIGNATURE_HEADER] = signature(settings.alert_webhook_secret, body)
    _post("webhook", url, body, headers, settings.alert_timeout_seconds)


def _send_slack(settings: Settings, payload: dict[str, Any]) -> None:
    body = json.dumps({"text": slack_text(payload)}).encode()
    headers = {"Content-Type": "application/json"}
    _post("slack", settings.alert_slack_webhook_url or "", body, headers, settings.alert_timeout_seconds)


def _post(target: str, url: str, body: bytes, headers: dict[str, str], timeout: float) -> None:
    where = describe_origin(url)
    try:
        answer = requests.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False)
    except requests.RequestException as error:  # its text holds the URL: name the origin only
        raise AlertNotSent(
            "alert_target_unreachable", f"{target} at {where}: {type(error).__name__}"
        ) from None
    answer.close()
    if not 200 <= answer.status_code < 300:
        raise AlertNotSent("alert_target_refused", f"{target} at {where} answered HTTP {answer.status_code}")


def summary_line(payload: dict[str, Any]) -> str:
    """`sync_failed · sync 12 · failed · insufficient_credits`: the alert in one line."""
    if payload.get("connection_id") is not None:
        subject = f"connection {payload['connection_id']}"
    elif payload.get("sync_id") is not None:
        subject = f"sync {payload['sync_id']}"
    else:
        subject = ""
    parts = [payload.get("kind"), subject, payload.get("status"), payload.get("error_code")]
    return " · ".join(str(part) for part in parts if part)


def slack_text(payload: dict[str, Any]) -> str:
    """Slack mrkdwn: the summary in bold, the message, and the ops page link."""
    text = f"*{summary_line(payload)}*\n{payload.get('message') or ''}"
    url = payload.get("url")
    return f"{text}\n<{url}|Open on the ops page>" if url else text


def email_message(settings: Settings, payload: dict[str, Any]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = f"[ApexVerify connector] {summary_line(payload)}"
    message["From"] = settings.alert_email_from or _default_sender(settings.smtp_url or "")
    message["To"] = ", ".join(_recipients(settings))
    lines = [payload.get("message") or "", ""]
    lines += [f"{key}: {value}" for key, value in payload.items() if key != "message" and value is not None]
    message.set_content("\n".join(lines) + "\n")
    return message


def _recipients(settings: Settings) -> list[str]:
    return [part.strip() for part in (settings.alert_email_to or "").split(",") if part.strip()]


def _default_sender(smtp_url: str) -> str:
    user = unquote(urlsplit(smtp_url).username or "")
    return user if "@" in user else "apexverify-connector@localhost"


def _send_email(settings: Settings, payload: dict[str, Any]) -> None:
    parts = urlsplit(settings.smtp_url or "")
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise AlertNotSent(
            "alert_target_misconfigured", "email: SMTP_URL must be smtp://[user:pass@]host:port"
        )
    where = f"{parts.scheme}://{parts.hostname}:{parts.port or DEFAULT_PORTS[parts.scheme]}"
    try:
        with _smtp_session(settings, parts.scheme, parts.hostname, parts.port) as smtp:
            if parts.username:
                smtp.login(unquote(parts.username), unquote(parts.password or ""))
            smtp.send_message(email_message(settings, payload))
    except AlertNotSent:
        raise
    except smtplib.SMTPResponseException as error:
        raise AlertNotSent(
            "alert_target_refused", f"email at {where}: the server answered {error.smtp_code}"
        ) from None
    except (smtplib.SMTPException, OSError) as error:
        raise AlertNotSent("alert_target_unreachable", f"email at {where}: {type(error).__name__}") from None


def _smtp_session(settings: Settings, scheme: str, host: str, port: int | None) -> smtplib.SMTP:
    """Connected and greeted, over TLS (implicit, or STARTTLS when the server offers it).

    Credentials never cross an unencrypted connection: a server that offers no STARTTLS gets the
    alert only when SMTP_URL names no user.
    """
    context = ssl.create_default_context(cafile=settings.smtp_ca_file)
    timeout = settings.alert_timeout_seconds
    if scheme == "smtps":
        return smtplib.SMTP_SSL(host, port or DEFAULT_PORTS[scheme], timeout=timeout, context=context)
    smtp = smtplib.SMTP(host, port or DEFAULT_PORTS[scheme], timeout=timeout)
    try:
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
        elif urlsplit(settings.smtp_url or "").username:
            raise AlertNotSent(
                "alert_target_insecure",
                f"email at {host}: the server offers no STARTTLS; SMTP_URL's password is never sent in clear",
            )
    except BaseException:
        smtp.close()
        raise
    return smtp
