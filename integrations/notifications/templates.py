"""Transactional email templates: a plain-text part and a minimal HTML part for each.

Templates live here as strings (not files) so they ship with the package without extra
package-data. The HTML environment autoescapes, so a buyer's note or an admin's rejection
reason can never inject markup; the text environment does not (it is never rendered as HTML).
Undefined names fail loudly (StrictUndefined): a half-filled email is worse than none.

Money is integer cents of MUR, shown as "Rs 1,250.00".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined

PAYMENT_METHODS = {
    "juice": "MCB Juice",
    "myt_money": "my.t money",
    "card": "card",
    "cod": "cash on delivery",
}


def format_mur(cents: int) -> str:
    """1250_00 -> "Rs 1,250.00". Integers only: money never passes through a float."""
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise TypeError(f"amounts are integer cents, not {type(cents).__name__}")
    sign = "-" if cents < 0 else ""
    rupees, rest = divmod(abs(cents), 100)
    return f"{sign}Rs {rupees:,}.{rest:02d}"


def payment_method_label(method: str | None) -> str:
    return PAYMENT_METHODS.get(method or "", method or "")


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class _Spec:
    subject: str
    required: tuple[str, ...]
    defaults: Mapping[str, Any]


ITEM_DEFAULTS: Mapping[str, Any] = {"items": (), "payment_method": None, "note": None}

SPECS: Mapping[str, _Spec] = {
    "order_confirmation": _Spec(
        "We received your order {{ order_id }}",
        ("order_id", "total"),
        {"name": None, **ITEM_DEFAULTS},
    ),
    "new_request_alert": _Spec(
        "New purchase request {{ order_id }} ({{ total | mur }})",
        ("order_id", "total"),
        {"buyer_name": None, "buyer_email": None, "dashboard_url": None, **ITEM_DEFAULTS},
    ),
    "order_approved": _Spec(
        "Your order {{ order_id }} is approved",
        ("order_id",),
        {"name": None, "total": None, "payment_method": None, "notes": None},
    ),
    "order_rejected": _Spec(
        "Your order {{ order_id }} could not be accepted",
        ("order_id", "reason"),
        {"name": None},
    ),
    "payment_receipt": _Spec(
        "Payment receipt for order {{ order_id }}",
        ("order_id", "amount"),
        {"name": None, "method": None, "transaction_id": None, "paid_at": None},
    ),
    "order_cancelled": _Spec(
        "Your order {{ order_id }} is cancelled",
        ("order_id",),
        {"name": None, "paid": False},
    ),
    "order_completed": _Spec(
        "Your order {{ order_id }} is complete",
        ("order_id",),
        {"name": None, "total": None},
    ),
    "payment_refund_due": _Spec(
        "A refund is on its way for order {{ order_id }}",
        ("order_id", "amount"),
        {"name": None, "method": None, "transaction_id": None},
    ),
    "payment_flagged": _Spec(
        "Payment {{ payment_id }} needs review (order {{ order_id }})",
        ("order_id", "payment_id", "reason"),
        {"amount": None, "transaction_id": None, "dashboard_url": None},
    ),
    "one_time_code": _Spec(
        "{% if purpose == 'password_reset' %}Reset your Fresh Roots password"
        "{% else %}Confirm your email for Fresh Roots{% endif %}",
        ("code", "purpose"),
        {"name": None, "expires_minutes": 10},
    ),
}

_ITEMS_TEXT = """{% for item in items %}
- {{ item.title }}: {{ item.quantity }} {{ item.unit }} x {{ item.price | mur }} = {{ (item.price * item.quantity) | mur }}
{% endfor %}"""  # noqa: E501

_TEXT = {
    "_items.txt": _ITEMS_TEXT,
    "order_confirmation": """Hello {{ name or "there" }},

Thank you! We received your purchase request {{ order_id }}.

{% include "_items.txt" %}
Total: {{ total | mur }}
{% if payment_method %}Payment: {{ payment_method | method }}
{% endif %}
{% if note %}Your note: {{ note }}
{% endif %}

We will tell you as soon as it is approved. Meanwhile the items are set aside for you.
""",
    "new_request_alert": """A new purchase request is waiting for approval.

Order: {{ order_id }}
{% if buyer_name or buyer_email %}Buyer: {{ buyer_name or "" }}
{%- if buyer_email %} <{{ buyer_email }}>{% endif %}

{% endif %}

{% include "_items.txt" %}
Total: {{ total | mur }}
{% if payment_method %}Payment: {{ payment_method | method }}
{% endif %}
{% if note %}Buyer's note: {{ note }}
{% endif %}
{% if dashboard_url %}

Review it: {{ dashboard_url }}
{% endif %}
""",
    "order_approved": """Hello {{ name or "there" }},

Good news: your order {{ order_id }} is approved.
{% if total is not none %}Total: {{ total | mur }}
{% endif %}
{% if payment_method == "cod" %}Please have the amount ready on delivery.
{% elif payment_method %}You can now pay with {{ payment_method | method }} in the app.
{% endif %}
{% if notes %}Note from Fresh Roots: {{ notes }}
{% endif %}
""",
    "order_rejected": """Hello {{ name or "there" }},

We are sorry: your order {{ order_id }} could not be accepted.
Reason: {{ reason }}

Nothing was charged, and the items were released.
""",
    "payment_receipt": """Hello {{ name or "there" }},

We received your payment for order {{ order_id }}.

Amount: {{ amount | mur }}
{% if method %}Method: {{ method | method }}
{% endif %}
{% if transaction_id %}Transaction: {{ transaction_id }}
{% endif %}
{% if paid_at %}Date: {{ paid_at }}
{% endif %}

Keep this email as your receipt.
""",
    "order_cancelled": """Hello {{ name or "there" }},

Your order {{ order_id }} is cancelled, and the items were released.
{% if paid %}Anything you paid for it will be refunded.
{% else %}Nothing was charged.
{% endif %}
""",
    "order_completed": """Hello {{ name or "there" }},

Your order {{ order_id }} is complete{% if total is not none %} ({{ total | mur }}){% endif %}.
Thank you for buying from Fresh Roots. Enjoy!
""",
    "payment_refund_due": """Hello {{ name or "there" }},

Your order {{ order_id }} was cancelled before your payment of {{ amount | mur }} reached us.
{% if method %}It was paid with {{ method | method }}.
{% endif %}
{% if transaction_id %}Transaction: {{ transaction_id }}
{% endif %}
We will refund it; you do not need to do anything.
""",
    "payment_flagged": """A payment needs review.

Payment: {{ payment_id }}
Order: {{ order_id }}
Reason: {{ reason }}
{% if amount is not none %}Amount: {{ amount | mur }}
{% endif %}
{% if transaction_id %}Gateway transaction: {{ transaction_id }}
{% endif %}
{% if dashboard_url %}

Review it: {{ dashboard_url }}
{% endif %}
""",
    "one_time_code": """Hello {{ name or "there" }},

Your Fresh Roots code is {{ code }}.

{% if purpose == "password_reset" %}Use it to choose a new password.
{% else %}Use it to confirm your email address.
{% endif %}
It works once and expires in {{ expires_minutes }} minutes. If you did not ask for it, you can
ignore this email.
""",
}

_SIGNATURE_TEXT = "\n— Fresh Roots\n"

_ITEMS_HTML = """{% if items %}
<table style="border-collapse:collapse">
{% for item in items %}
<tr><td>{{ item.title }}</td><td>{{ item.quantity }} {{ item.unit }}</td>
<td>{{ item.price | mur }}</td><td>{{ (item.price * item.quantity) | mur }}</td></tr>
{% endfor %}
</table>
{% endif %}"""

_HTML = {
    "_items.html": _ITEMS_HTML,
    "_layout.html": """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ subject }}</title></head>
<body style="font-family:sans-serif;line-height:1.4;color:#1b1b1b">
{% block content %}{% endblock %}
<p style="color:#666">— Fresh Roots</p>
</body></html>
""",
    "order_confirmation": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>Thank you! We received your purchase request <strong>{{ order_id }}</strong>.</p>
{% include "_items.html" %}
<p>Total: <strong>{{ total | mur }}</strong></p>
{% if payment_method %}<p>Payment: {{ payment_method | method }}</p>{% endif %}
{% if note %}<p>Your note: {{ note }}</p>{% endif %}
<p>We will tell you as soon as it is approved.</p>
{% endblock %}""",
    "new_request_alert": """{% extends "_layout.html" %}{% block content %}
<p>A new purchase request is waiting for approval: <strong>{{ order_id }}</strong>.</p>
{% if buyer_name or buyer_email %}<p>Buyer: {{ buyer_name or "" }}
{% if buyer_email %}&lt;{{ buyer_email }}&gt;{% endif %}</p>{% endif %}
{% include "_items.html" %}
<p>Total: <strong>{{ total | mur }}</strong></p>
{% if payment_method %}<p>Payment: {{ payment_method | method }}</p>{% endif %}
{% if note %}<p>Buyer's note: {{ note }}</p>{% endif %}
{% if dashboard_url %}<p><a href="{{ dashboard_url }}">Review it</a></p>{% endif %}
{% endblock %}""",
    "order_approved": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>Good news: your order <strong>{{ order_id }}</strong> is approved.</p>
{% if total is not none %}<p>Total: <strong>{{ total | mur }}</strong></p>{% endif %}
{% if payment_method == "cod" %}<p>Please have the amount ready on delivery.</p>
{% elif payment_method %}<p>You can now pay with {{ payment_method | method }} in the app.</p>
{% endif %}
{% if notes %}<p>Note from Fresh Roots: {{ notes }}</p>{% endif %}
{% endblock %}""",
    "order_rejected": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>We are sorry: your order <strong>{{ order_id }}</strong> could not be accepted.</p>
<p>Reason: {{ reason }}</p>
<p>Nothing was charged, and the items were released.</p>
{% endblock %}""",
    "payment_receipt": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>We received your payment for order <strong>{{ order_id }}</strong>.</p>
<p>Amount: <strong>{{ amount | mur }}</strong></p>
{% if method %}<p>Method: {{ method | method }}</p>{% endif %}
{% if transaction_id %}<p>Transaction: {{ transaction_id }}</p>{% endif %}
{% if paid_at %}<p>Date: {{ paid_at }}</p>{% endif %}
<p>Keep this email as your receipt.</p>
{% endblock %}""",
    "order_cancelled": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>Your order <strong>{{ order_id }}</strong> is cancelled, and the items were released.</p>
<p>{% if paid %}Anything you paid for it will be refunded.
{% else %}Nothing was charged.{% endif %}</p>
{% endblock %}""",
    "order_completed": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>Your order <strong>{{ order_id }}</strong> is complete
{%- if total is not none %} ({{ total | mur }}){% endif %}.</p>
<p>Thank you for buying from Fresh Roots. Enjoy!</p>
{% endblock %}""",
    "payment_refund_due": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>Your order <strong>{{ order_id }}</strong> was cancelled before your payment of
<strong>{{ amount | mur }}</strong> reached us.</p>
{% if method %}<p>It was paid with {{ method | method }}.</p>{% endif %}
{% if transaction_id %}<p>Transaction: {{ transaction_id }}</p>{% endif %}
<p>We will refund it; you do not need to do anything.</p>
{% endblock %}""",
    "payment_flagged": """{% extends "_layout.html" %}{% block content %}
<p>A payment needs review.</p>
<p>Payment: <strong>{{ payment_id }}</strong><br>Order: {{ order_id }}<br>Reason: {{ reason }}</p>
{% if amount is not none %}<p>Amount: {{ amount | mur }}</p>{% endif %}
{% if transaction_id %}<p>Gateway transaction: {{ transaction_id }}</p>{% endif %}
{% if dashboard_url %}<p><a href="{{ dashboard_url }}">Review it</a></p>{% endif %}
{% endblock %}""",
    "one_time_code": """{% extends "_layout.html" %}{% block content %}
<p>Hello {{ name or "there" }},</p>
<p>Your Fresh Roots code is</p>
<p style="font-size:28px;letter-spacing:4px"><strong>{{ code }}</strong></p>
<p>{% if purpose == "password_reset" %}Use it to choose a new password.
{% else %}Use it to confirm your email address.{% endif %}
It works once and expires in {{ expires_minutes }} minutes.
If you did not ask for it, you can ignore this email.</p>
{% endblock %}""",
}


def _environment(templates: Mapping[str, str], *, autoescape: bool) -> Environment:
    env = Environment(
        loader=DictLoader(dict(templates)),
        undefined=StrictUndefined,
        autoescape=autoescape,  # noqa: S701 - on for HTML; text parts are never shown as HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["mur"] = format_mur
    env.filters["method"] = payment_method_label
    return env


_TEXT_ENV = _environment(_TEXT, autoescape=False)
_HTML_ENV = _environment(_HTML, autoescape=True)
_SUBJECT_ENV = _environment({}, autoescape=False)
_CODE = re.compile(r"[0-9]{6}")
TEMPLATE_NAMES = tuple(SPECS)


def render(template_name: str, **context: Any) -> RenderedEmail:
    """Subject, text and HTML for one email. Unknown extra context keys are ignored."""
    spec = SPECS.get(template_name)
    if spec is None:
        raise KeyError(f"no email template {template_name!r}; known: {', '.join(SPECS)}")
    missing = [key for key in spec.required if context.get(key) is None]
    if missing:
        raise ValueError(f"{template_name} needs {', '.join(missing)}")
    values = {**spec.defaults, **{k: v for k, v in context.items() if v is not None}}
    if template_name == "one_time_code":
        # A str, exactly six digits: an int would silently drop a leading zero.
        if not isinstance(values["code"], str) or not _CODE.fullmatch(values["code"]):
            raise ValueError("a one-time code is a string of six digits")
        if values["purpose"] not in ("verify_email", "password_reset"):
            raise ValueError("purpose is verify_email or password_reset")
    # Headers cannot hold line breaks; collapse any whitespace a value brought in.
    subject = " ".join(_SUBJECT_ENV.from_string(spec.subject).render(**values).split())
    text = _TEXT_ENV.get_template(template_name).render(**values).rstrip() + "\n"
    html = _HTML_ENV.get_template(template_name).render(subject=subject, **values)
    return RenderedEmail(subject=subject, text=text + _SIGNATURE_TEXT, html=html)
