"""Notification channels the outbox worker calls: Expo push, email over SMTP, and the SMS seam.

- `ExpoPushClient` speaks Expo's push API (chunks of 100, gzip, tickets in order, receipts in
  chunks of 1,000, backoff on 429 / MessageRateExceeded, `PushUnavailable` when Expo is down);
  `tokens_to_deactivate` names the tokens Expo reports as `DeviceNotRegistered`.
- `SmtpEmailSender` sends through any SMTP relay (STARTTLS), raising `EmailUnavailable`
  (retry later) or `EmailRejected` (permanent); `render` fills the email templates.
- `create_expo_standin` (in `standin_expo`) is an Expo stand-in for tests and local runs.
- `SmsSender` is a protocol only: no SMS provider is wired yet.
"""

from integrations.notifications.email import (
    EmailError,
    EmailRejected,
    EmailUnavailable,
    SmtpEmailSender,
    make_message_id,
)
from integrations.notifications.expo import (
    DEVICE_NOT_REGISTERED,
    MESSAGE_RATE_EXCEEDED,
    MESSAGE_TOO_BIG,
    ExpoPushClient,
    PushError,
    PushMessage,
    PushReceipt,
    PushRequestError,
    PushTicket,
    PushUnavailable,
    tokens_to_deactivate,
)
from integrations.notifications.settings import EmailSettings, ExpoSettings
from integrations.notifications.sms import SmsSender
from integrations.notifications.templates import (
    TEMPLATE_NAMES,
    RenderedEmail,
    format_mur,
    render,
)

__all__ = [
    "DEVICE_NOT_REGISTERED",
    "MESSAGE_RATE_EXCEEDED",
    "MESSAGE_TOO_BIG",
    "TEMPLATE_NAMES",
    "EmailError",
    "EmailRejected",
    "EmailSettings",
    "EmailUnavailable",
    "ExpoPushClient",
    "ExpoSettings",
    "PushError",
    "PushMessage",
    "PushReceipt",
    "PushRequestError",
    "PushTicket",
    "PushUnavailable",
    "RenderedEmail",
    "SmsSender",
    "SmtpEmailSender",
    "format_mur",
    "make_message_id",
    "render",
    "tokens_to_deactivate",
]
