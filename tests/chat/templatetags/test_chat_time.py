"""chat.templatetags.chat_time: a message's time exactly as Django's `date` filter writes it
(what the message template used before), in every time zone and language, across minutes;
the label kept per minute is never another zone's or language's."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest
from django.template import engines
from django.utils import timezone, translation

OURS = engines["django"].from_string("{% load chat_time %}{{ t|iso_time }}|{{ t|short_time }}")
DJANGOS = engines["django"].from_string("""{{ t|date:'c' }}|{{ t|date:"M j, H:i" }}""")

MOMENTS = [
    datetime.datetime(2026, 12, 4, 8, 59, 59, 999999, tzinfo=datetime.UTC),
    datetime.datetime(2026, 12, 4, 9, 0, 0, tzinfo=datetime.UTC),
    datetime.datetime(2026, 3, 29, 0, 30, 12, 345, tzinfo=datetime.UTC),  # a DST change in Europe
    datetime.datetime(2026, 5, 1, 23, 59, 1, tzinfo=datetime.UTC),
]


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns"])
@pytest.mark.parametrize("language", ["en-us", "de", "fr"])
def test_the_time_filters_write_what_the_date_filter_writes(zone, language):
    with timezone.override(zoneinfo.ZoneInfo(zone)), translation.override(language):
        for moment in MOMENTS:
            assert OURS.render({"t": moment}) == DJANGOS.render({"t": moment})


def test_a_kept_label_is_not_reused_for_another_zone_or_language():
    moment = MOMENTS[0]
    seen = set()
    for zone in ["UTC", "Asia/Kolkata"]:
        for language in ["en-us", "de"]:
            with timezone.override(zoneinfo.ZoneInfo(zone)), translation.override(language):
                OURS.render({"t": moment})  # kept
                ours = OURS.render({"t": moment})
                assert ours == DJANGOS.render({"t": moment})
                seen.add(ours)
    assert len(seen) == 4  # "Dec" is "Dez" in German; in Kolkata it is 14:29


def test_no_time_writes_nothing_as_the_date_filter_does():
    assert OURS.render({"t": None}) == DJANGOS.render({"t": None}) == "|"
