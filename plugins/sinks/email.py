"""The `email` sink: one message per notification, plain text and HTML, sent over SMTP with aiosmtplib.

SMTP reply codes (RFC 5321 section 4.2.1): 4yz is a transient failure, worth trying again later;
5yz is permanent, the same message will be refused again.
"""

from __future__ import annotations

import email.utils
import hashlib
import html
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiosmtplib
import pydantic
from pydantic import ConfigDict, Field

from flowforged.config import Duration, SecretValue, SinkConfig
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.plugin import Notification, Sink, SinkContext
from flowforged_plugins.sinks.slack import human_duration

SUBJECT_LABELS = {"broken": "BROKEN", "still_failing": "STILL FAILING", "fixed": "FIXED"}
LABELS = {"broken": "Broken", "still_failing": "Still failing", "fixed": "Fixed"}
COLOURS = {"broken": "#cf222e", "still_failing": "#cf222e", "fixed": "#1a7f37"}
MAX_OTHERS_LISTED = 50


class EmailConfig(SinkConfig):
    model_config = ConfigDict(populate_by_name=True)

    host: str
    port: int | None = Field(default=None, gt=0, lt=65536)  # None: 465 for implicit TLS, else 587
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username: str | None = None
    password: SecretValue | None = None
    from_: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    timeout: Duration = 30.0
    ca_file: Path | None = None  # PEM certificates of a private CA, for an internal server

    @pydantic.field_validator("from_")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _check_address(value)

    @pydantic.field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        return [_check_address(item) for item in value]

    @property
    def smtp_port(self) -> int:
        # Submission ports: 465 for implicit TLS (RFC 8314), 587 otherwise (RFC 6409).
        return self.port or (465 if self.tls == "implicit" else 587)

    def problems(self) -> list[tuple[str, str]]:
        if self.username is not None and self.password is None:
            return [("password", "missing (username is set)")]
        if self.password is not None and self.username is None:
            return [("username", "missing (password is set)")]
        return []


def _check_address(value: str) -> str:
    """`ci@example.com` or `FlowForge <ci@example.com>`."""
    _, address = email.utils.parseaddr(value)
    if "@" not in address or "\n" in value or "\r" in value:
        raise ValueError(f"not an email address: {value!r}")
    return value


class EmailSink(Sink):
    type = "email"
    config_model = EmailConfig
    min_interval: ClassVar[float] = 0.0
    config: EmailConfig

    async def send(self, notification: Notification, context: SinkContext) -> str:
        config = self.config
        message = render(notification, config.from_, config.to)
        recipients = [email.utils.parseaddr(item)[1] for item in config.to]
        host = config.host
        try:
            refused, reply = await aiosmtplib.send(
                message,
                sender=email.utils.parseaddr(config.from_)[1],
                recipients=recipients,
                hostname=host,
                port=config.smtp_port,
                username=config.username,
                password=config.password.get() if config.password else None,
                use_tls=config.tls == "implicit",
                start_tls=config.tls == "starttls",  # True: refuse to go on without STARTTLS
                timeout=config.timeout,
                cert_bundle=str(config.ca_file) if config.ca_file else None,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            secrets = [config.password.get()] if config.password else []
            raise smtp_error(exc, f"{host}:{config.smtp_port}", config.username, secrets) from None
        if refused:
            # Retrying would send the message again to those who got it: say who did not, and stop.
            context.log.warning(
                "some email recipients were refused",
                sink=self.name,
                refused=sorted(refused),
                notification_id=notification.id,
            )
            who = ", ".join(f"{address} ({r.code} {r.message})" for address, r in sorted(refused.items()))
            return f"sent to {len(recipients) - len(refused)} of {len(recipients)} recipients; refused: {who}"
        return f"accepted by {host} for {len(recipients)} recipient(s): {reply}"


def smtp_error(
    exc: BaseException, server: str, username: str | None, secrets: Sequence[str] = ()
) -> SinkError | PermanentSinkError:
    """What an SMTP failure means for the notification: 4yz replies and lost connections are tried
    again, 5yz replies and a config the server does not support are not. A server's reply may quote
    what it was sent (the password, in some AUTH failures): `secrets` never reach the stored error."""
    error = _smtp_error(exc, server, username)
    text = str(error)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    if text == str(error):
        return error
    return SinkError(text, error.retry_after) if isinstance(error, SinkError) else PermanentSinkError(text)


def _smtp_error(exc: BaseException, server: str, username: str | None) -> SinkError | PermanentSinkError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if all(r.code >= 500 for r in exc.recipients):
            return PermanentSinkError(f"{server} refused every recipient: {detail}")
        return SinkError(f"{server} refused every recipient for now: {detail}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return PermanentSinkError(f"{server} refused the login of {username!r}: {exc.code} {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if exc.code >= 500:
            return PermanentSinkError(f"{server} refused the message: {exc.code} {exc.message}")
        return SinkError(f"{server} answered {exc.code} {exc.message}")
    if isinstance(exc, TimeoutError):
        return SinkError(f"cannot send through {server}: timed out")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        reason = getattr(exc, "message", None) or getattr(exc, "strerror", None) or type(exc).__name__
        return SinkError(f"cannot send through {server}: {reason}")
    # What is left (no STARTTLS, no AUTH offered) is a mismatch between the config and the server:
    # it stays until someone changes one of them.
    return PermanentSinkError(f"{server}: {getattr(exc, 'message', None) or exc}")


# --- rendering (pure) --------------------------------------------------------------------------


def render(notification: Notification, sender: str, to: list[str], now: float | None = None) -> EmailMessage:
    """The whole message: headers, a plain-text part and an HTML alternative."""
    message = EmailMessage()
    message["Subject"] = subject(notification)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = email.utils.formatdate(now, usegmt=True)
    # The same id on every retry, so a mail client shows a message delivered twice only once.
    message["Message-ID"] = _message_id(notification, sender)
    # RFC 3834 section 5: tells vacation responders and other robots not to answer.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text_body(notification))
    message.add_alternative(html_body(notification), subtype="html")
    return message


def subject(notification: Notification) -> str:
    """`[FlowForge] BROKEN octo-org/octo-repo test.yml on main (3484a3f)`: readable in an inbox list."""
    parts = [
        "[FlowForge]",
        SUBJECT_LABELS.get(notification.transition, notification.transition.upper()),
        short_pipeline(notification.pipeline),
    ]
    if notification.branch:
        parts.append(f"on {notification.branch}")
    if notification.sha:
        parts.append(f"({notification.sha[:7]})")
    if notification.others:
        parts.append(f"and {len(notification.others)} more")
    return " ".join(" ".join(parts).split())  # no line breaks from names in a header


def short_pipeline(pipeline: str) -> str:
    """A GitHub workflow `owner/repo/.github/workflows/test.yml` as `owner/repo test.yml`."""
    repo, sep, workflow = pipeline.partition("/.github/workflows/")
    return f"{repo} {workflow}" if sep else pipeline


def text_body(notification: Notification) -> str:
    lines = _text_item(_item(notification), detailed=True)
    others = notification.others
    if others:
        lines += ["", "Other pipelines of this commit:"]
        for other in others[:MAX_OTHERS_LISTED]:
            lines += ["", *("  " + line for line in _text_item(_item(other), detailed=False))]
        if len(others) > MAX_OTHERS_LISTED:
            lines += ["", f"  ...and {len(others) - MAX_OTHERS_LISTED} more"]
    lines += ["", "-- ", f"Sent by FlowForge (source {notification.source}, sink {notification.sink})."]
    return "\n".join(lines) + "\n"


def html_body(notification: Notification) -> str:
    parts = [_html_item(_item(notification), detailed=True)]
    others = notification.others
    if others:
        parts.append("<h3>Other pipelines of this commit</h3>")
        parts += [_html_item(_item(other), detailed=False) for other in others[:MAX_OTHERS_LISTED]]
        if len(others) > MAX_OTHERS_LISTED:
            parts.append(f"<p>…and {len(others) - MAX_OTHERS_LISTED} more</p>")
    footer = f"Sent by FlowForge (source {html.escape(notification.source)}, sink {html.escape(notification.sink)})."
    parts.append(f'<p style="color:#57606a;font-size:12px">{footer}</p>')
    return '<!DOCTYPE html>\n<html><body style="font-family:sans-serif">\n' + "\n".join(parts) + "\n</body></html>\n"


def _item(source: Notification | Mapping[str, Any]) -> dict[str, Any]:
    get = source.get if isinstance(source, Mapping) else lambda key: getattr(source, key, None)
    pipeline = str(get("pipeline") or "")
    commit = (get("commit_message") or "").strip().splitlines()
    duration = get("duration_seconds")
    return {
        "transition": str(get("transition") or ""),
        "name": str(get("pipeline_name") or pipeline.rpartition("/")[2] or "pipeline"),
        "pipeline": pipeline,
        "branch": get("branch"),
        "run": _run(get("run_id"), get("attempt")),
        "url": get("url"),
        "commit": " ".join(filter(None, [(get("sha") or "")[:7], commit[0] if commit else ""])),
        "author": get("author"),
        "duration": human_duration(duration) if duration is not None else None,
        "failed_jobs": [str(job) for job in get("failed_jobs") or ()],
    }


def _run(run_id: Any, attempt: Any) -> str | None:
    if not run_id:
        return None
    return f"{run_id}" + (f" (attempt {attempt})" if (attempt or 1) > 1 else "")


def _rows(item: dict[str, Any], detailed: bool) -> list[tuple[str, str]]:
    rows = [("Pipeline", item["pipeline"]), ("Branch", item["branch"]), ("Run", item["run"])]
    if detailed:
        rows += [("Commit", item["commit"]), ("Author", item["author"])]
    rows.append(("Duration", item["duration"]))
    return [(label, value) for label, value in rows if value]


def _text_item(item: dict[str, Any], detailed: bool) -> list[str]:
    lines = [f"{LABELS.get(item['transition'], item['transition'])}: {item['name']}"]
    lines += [f"{label + ':':<10} {value}" for label, value in _rows(item, detailed)]
    if item["url"]:
        lines.append(f"{'Link:':<10} {item['url']}")
    if item["failed_jobs"]:
        lines.append("Failed jobs:")
        lines += [f"  - {job}" for job in item["failed_jobs"]]
    return lines


def _html_item(item: dict[str, Any], detailed: bool) -> str:
    colour = COLOURS.get(item["transition"], "#57606a")
    label = html.escape(LABELS.get(item["transition"], item["transition"]))
    name = html.escape(item["name"])
    if item["url"]:
        name = f'<a href="{html.escape(item["url"], quote=True)}">{name}</a>'
    out = [
        f'<h2 style="margin-bottom:4px"><span style="color:{colour}">{label}:</span> {name}</h2>',
        '<table style="border-collapse:collapse">',
    ]
    out += [
        f'<tr><td style="padding-right:12px;color:#57606a">{html.escape(key)}</td>'
        f"<td>{html.escape(str(value))}</td></tr>"
        for key, value in _rows(item, detailed)
    ]
    out.append("</table>")
    if item["failed_jobs"]:
        jobs = "".join(f"<li>{html.escape(job)}</li>" for job in item["failed_jobs"])
        out.append(f"<p>Failed jobs:</p><ul>{jobs}</ul>")
    return "\n".join(out)


def _message_id(notification: Notification, sender: str) -> str:
    # Not the outbox id alone: a new database starts counting again, and a mail client would hide
    # the new message behind an old one with the same id.
    key = "|".join(
        str(part)
        for part in (
            notification.id,
            notification.sink,
            notification.source,
            notification.pipeline,
            notification.run_id,
            notification.attempt,
            notification.transition,
        )
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "flowforge.invalid"
    return f"<flowforge.{notification.id}.{digest}@{domain}>"
