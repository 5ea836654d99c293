"""A message's time, as the `date` filter writes it, for less.

Every send renders its message once (chat/partials/message.html), on the send's path: the
`date` filter's localtime, DateFormat and month-name translation per call are most of that
render. The label only changes once a minute: it is kept per local minute and language.
"""

from __future__ import annotations

import datetime
import functools

from django import template
from django.utils import dateformat, translation

register = template.Library()


@register.filter(expects_localtime=True)
def iso_time(value: datetime.datetime | None) -> str:
    """As `|date:'c'`."""
    return value.isoformat() if value else ""


@register.filter(expects_localtime=True)
def short_time(value: datetime.datetime | None) -> str:
    """As `|date:"M j, H:i"`, kept per local minute and language."""
    if not value:
        return ""
    return _short_time(
        value.replace(second=0, microsecond=0, tzinfo=None), translation.get_language()
    )


@functools.lru_cache(maxsize=1024)
def _short_time(minute: datetime.datetime, language: str | None) -> str:
    return dateformat.format(minute, "M j, H:i")
