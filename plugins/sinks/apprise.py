"""The `apprise` sink: one notification to every channel Apprise reaches (Microsoft Teams, Discord,
Telegram, ntfy, Matrix, PagerDuty, Opsgenie, ...), given as a list of Apprise URLs
(https://github.com/caronc/apprise/wiki). A URL carries its credentials, so each may be {secret: NAME}.

Apprise is synchronous (it posts with `requests`): a send runs in a thread, within `timeout`. Each URL is
notified on its own, so that its outcome is its own: a URL that worked is not notified again when the
notification is retried for another. Apprise reports each service's outcome (AppriseResult, Apprise 2.3)
and the service's HTTP status in its log lines (`error=<status>`; ntfy's 5-digit codes start with it):
a 4xx other than 408/425/429 is the receiver refusing this notification or these credentials
(permanent), anything else (5xx, 429, a timeout, a connection error) may work later (retried).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from typing import Annotated, Any, ClassVar

import apprise
import pydantic
from pydantic import AfterValidator, Field

from flowforged.config import Duration, SecretValue, SinkConfig
from flowforged.errors import PermanentSinkError, SinkError
from flowforged.plugin import Notification, Sink, SinkContext
from flowforged.secrets import Secret
from flowforged_plugins.sinks.slack import TRANSITIONS, human_duration, truncate
from flowforged_plugins.sinks.webhook import body_excerpt

RETRYABLE_4XX = {408, 425, 429}
MAX_REMEMBERED = 1000  # notifications whose partly-done delivery is remembered between attempts
MAX_JOBS_LISTED = 20


def _quiet_apprise() -> None:
    """Apprise's own log lines can quote parts of a URL (tokens, passwords) that the log redactor does
    not know as secrets: they stay out of the daemon's log. Its outcomes come back in AppriseResult."""
    logger = logging.getLogger("apprise")
    logger.propagate = False
    if not any(isinstance(handler, logging.NullHandler) for handler in logger.handlers):
        logger.addHandler(logging.NullHandler())


def _apprise_url(value: Secret) -> Secret:
    if value.origin == "missing":  # commands that need no secret's value resolve it leniently
        return value
    _quiet_apprise()
    if apprise.Apprise.instantiate(value.get()) is None:
        scheme = value.get().partition("://")[0] if "://" in value.get() else ""
        known = f"scheme {scheme!r}" if scheme and len(scheme) <= 20 and scheme.isalnum() else "no scheme"
        raise ValueError(f"not a URL Apprise can use ({known}; see https://github.com/caronc/apprise/wiki)")
    return value


AppriseURL = Annotated[SecretValue, AfterValidator(_apprise_url)]


class AppriseConfig(SinkConfig):
    urls: list[AppriseURL] = Field(min_length=1)
    timeout: Duration = Field(default=30.0, gt=0)  # for each URL: Apprise's own call deadline

    @pydantic.field_validator("urls", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        if isinstance(value, str | dict):
            raise ValueError("expected a list of Apprise URLs")
        return value


class AppriseSink(Sink):
    type = "apprise"
    config_model = AppriseConfig
    min_interval: ClassVar[float] = 0.0
    config: AppriseConfig

    def __init__(self, name: str, config: SinkConfig):
        super().__init__(name, config)
        _quiet_apprise()
        self._done: OrderedDict[int, set[int]] = OrderedDict()  # notification id: indexes of URLs done

    async def send(self, notification: Notification, context: SinkContext) -> str:
        done = self._done.setdefault(notification.id, set())
        title, body = render(notification)
        kind = apprise.NotifyType.SUCCESS if notification.transition == "fixed" else apprise.NotifyType.FAILURE
        retry, refused = [], []
        for index, url in enumerate(self.config.urls):
            if index in done:
                continue
            outcome = await self._notify(url, title, body, kind)
            if outcome is None:
                done.add(index)
            elif outcome[0]:
                refused.append(f"urls.{index}: {outcome[1]}")
                done.add(index)  # not sent again by a retry: the receiver said no
            else:
                retry.append(f"urls.{index}: {outcome[1]}")
        secrets = [part for url in self.config.urls for part in _secret_parts(url.get())]
        if retry:
            self._remember(notification.id)
            raise SinkError(body_excerpt("; ".join(retry + refused), 400, secrets))
        self._done.pop(notification.id, None)
        if refused:
            raise PermanentSinkError(body_excerpt("; ".join(refused), 400, secrets))
        return f"sent to {len(self.config.urls)} Apprise URL(s)"

    async def _notify(self, url: Secret, title: str, body: str, kind: Any) -> tuple[bool, str] | None:
        """None when sent; else (permanent, why)."""
        timeout = self.config.timeout
        try:
            # A thread that outlives its deadline is left to finish: Apprise's own timeout ends it soon.
            async with asyncio.timeout(timeout + 5):
                result = await asyncio.to_thread(_notify_one, url.get(), title, body, kind, timeout)
        except TimeoutError:
            return False, f"no answer within {timeout:g} s"
        return classify(result)

    def _remember(self, notification_id: int) -> None:
        self._done.move_to_end(notification_id)
        while len(self._done) > MAX_REMEMBERED:
            self._done.popitem(last=False)


def _notify_one(url: str, title: str, body: str, kind: Any, timeout: float) -> Any:
    notifier = apprise.Apprise()
    notifier.add(url)
    return notifier.notify(
        body=body, title=title, notify_type=kind, body_format=apprise.NotifyFormat.TEXT, timeout=timeout
    )


def classify(result: Any) -> tuple[bool, str] | None:
    """None when every service of the URL was notified; else (permanent, what went wrong)."""
    if result:
        return None
    services = list(result)
    if not services:
        return True, "Apprise could not use this URL"
    for service in services:
        if service:
            continue
        name = str(service.name)[:40]
        if service.status == apprise.AppriseResultStatus.TIMEOUT:
            return False, f"{name}: no answer in time"
        status = http_status(" ".join(entry.message for entry in service.logs()))
        if status is None:
            return False, f"{name}: not delivered (connection error or no answer)"
        permanent = 400 <= status < 500 and status not in RETRYABLE_4XX
        return permanent, f"{name}: HTTP {status}"
    return False, "not delivered"


def http_status(text: str) -> int | None:
    """The HTTP status an Apprise service logged with its failure (`error=404.`; ntfy: `error=40301.`)."""
    found = re.findall(r"error=(\d{3})\d*\b", text)
    return int(found[-1]) if found else None


def _secret_parts(url: str) -> list[str]:
    """What an error must not repeat of an Apprise URL: all of it, and each part after the scheme (hosts,
    users and path segments are tokens in many schemes: `tgram://{bot_token}/{chat_id}`)."""
    rest = url.partition("://")[2]
    return [url, rest, *(part for part in re.split(r"[/:@?&=#]", rest) if len(part) >= 6)]


def render(notification: Notification) -> tuple[str, str]:
    """Title and plain-text body: what every Apprise service can show."""
    emoji, label = TRANSITIONS.get(notification.transition, ("⚪", notification.transition))
    name = notification.pipeline_name or notification.pipeline.rpartition("/")[2] or "pipeline"
    title = f"{emoji} {label}: {name}" + (f" on {notification.branch}" if notification.branch else "")
    lines = [f"Pipeline: {notification.pipeline} ({notification.source})"]
    if notification.sha:
        subject = (notification.commit_message or "").strip().splitlines()
        lines.append(f"Commit: {notification.sha[:7]} {truncate(subject[0], 200) if subject else ''}".rstrip())
    if notification.author:
        lines.append(f"Author: {truncate(notification.author, 150)}")
    if notification.duration_seconds is not None:
        lines.append(f"Duration: {human_duration(notification.duration_seconds)}")
    if notification.failed_jobs:
        jobs = list(notification.failed_jobs)
        more = f" and {len(jobs) - MAX_JOBS_LISTED} more" if len(jobs) > MAX_JOBS_LISTED else ""
        lines.append("Failed jobs: " + ", ".join(truncate(j, 100) for j in jobs[:MAX_JOBS_LISTED]) + more)
    if notification.others:
        lines.append(f"And {len(notification.others)} more pipeline(s) of this commit")
    if notification.url:
        lines.append(f"Run: {notification.url}")
    return truncate(title, 250), "\n".join(lines)
