"""The named types of a conversation's stream (chat.stream), in a module of their own so the
reads that return them (chat.selectors) need nothing else of it."""

from __future__ import annotations

from typing import NamedTuple


class Position(NamedTuple):
    """The newest sequence number of a history, and which history (a restore starts another
    epoch: the same numbers then name other messages). Centrifuge's StreamPosition."""

    seq: int
    epoch: str


class Row(NamedTuple):
    """One stored message as every socket is sent it."""

    seq: int
    frame: str  # the message's whole websocket frame; frames of consecutive rows concatenate
