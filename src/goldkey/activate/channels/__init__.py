"""The built-in channels, registered through the same contract as any plugin (``base.register``)."""

from goldkey.activate.channels import calllist, email, push, sink, sms, webhook, wechat
from goldkey.activate.channels.base import (
    Channel,
    ChannelConfig,
    OutboundMessage,
    RateLimit,
    Receipt,
    SendResult,
    channel_class,
    register,
    registered,
)

__all__ = [
    "Channel", "ChannelConfig", "OutboundMessage", "RateLimit", "Receipt", "SendResult", "channel_class",
    "register", "registered", "calllist", "email", "push", "sink", "sms", "webhook", "wechat",
]
