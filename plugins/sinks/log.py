"""The `log` sink: a notification as one structured log line (the example config's default)."""

from __future__ import annotations

import dataclasses

from flowforged.plugin import Notification, Sink, SinkContext


class LogSink(Sink):
    type = "log"

    async def send(self, notification: Notification, context: SinkContext) -> str:
        fields = {k: v for k, v in dataclasses.asdict(notification).items() if v not in (None, (), "")}
        fields["notification_id"] = fields.pop("id")
        context.log.warning("pipeline " + notification.transition, **fields)
        return "logged"
