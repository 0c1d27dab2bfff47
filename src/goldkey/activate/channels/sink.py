"""The file / console sink: writes each message as one JSON line (the demo's channel).

It stands in for a real channel of the kind it ``simulates`` (its consent, caps and address), so a
demo exercises every guardrail without sending anything to anyone.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO, Literal

import orjson
from pydantic import Field

from goldkey.activate.channels.base import Channel, ChannelConfig, OutboundMessage, SendResult, register
from goldkey.core.clock import to_iso, utcnow


class SinkConfig(ChannelConfig):
    path: str = Field("-", description="JSONL file to append to, a file name in the workspace's folder of the "
                                        "channel-files directory; '-' writes to standard output.")
    simulates: Literal["email", "sms", "wechat", "push", "call"] = Field(
        "sms", description="The channel whose consent, caps and address the sink uses.")
    rate_per_second: float = Field(1e9, gt=0)


_ADDRESS = {"email": "email", "sms": "phone", "call": "phone", "wechat": "wechat_openid", "push": "device_id"}


@register
class SinkChannel(Channel):
    """Appends messages to a JSONL file (or prints them)."""

    kind = "sink"
    consent_channel = "sms"
    address_type = "phone"
    config_model = SinkConfig
    file_fields = ("path",)
    deduplicates_by_message_id = True  # a line per message id is what a re-read would count
    concurrent_sends = False  # a local append: worker threads would only add hand-offs
    config: SinkConfig

    def __init__(self, config: SinkConfig, secrets: dict[str, str], **kw: object) -> None:  # type: ignore[override]
        super().__init__(config, secrets)
        self.consent_channel = config.simulates
        self.address_type = _ADDRESS[config.simulates]
        self._lock = threading.Lock()
        self._file = None if config.path == "-" else Path(config.path)
        self._out: BinaryIO | None = None  # opened at the first send, kept for this instance's life
        if self._file is not None:
            self._file.parent.mkdir(parents=True, exist_ok=True)

    def send(self, message: OutboundMessage) -> SendResult:
        line = orjson.dumps({"at": to_iso(utcnow()), "simulates": self.consent_channel, **asdict(message)}) + b"\n"
        with self._lock:
            if self._file is None:
                sys.stdout.write(line.decode())
            else:
                # one append handle per channel instance (a delivery round), a flushed line per message:
                # opening and closing the file for every message was most of a sink's send
                if self._out is None:
                    self._out = self._file.open("ab", buffering=0)
                self._out.write(line)
        return SendResult.sent(message.message_id)

    def close(self) -> None:
        with self._lock:
            if self._out is not None:
                self._out.close()
                self._out = None
        super().close()

    def __del__(self) -> None:
        out = getattr(self, "_out", None)
        if out is not None:
            out.close()
