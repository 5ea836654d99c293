"""The channel-layer groups Parley broadcasts to, and what a layer call can raise."""

from __future__ import annotations

import asyncio

try:  # channels-redis raises redis-py errors; the in-memory layer raises none of these.
    from redis.exceptions import RedisError

    LAYER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
except ImportError:  # pragma: no cover
    LAYER_ERRORS = (OSError, asyncio.TimeoutError)


def conversation_group(conversation_id: int) -> str:
    """Every process with a socket on the conversation (its hub), and every conversation
    list showing it: new messages, typing, presence."""
    return f"chat.{conversation_id}"


def conversation_id_of(group: str) -> int | None:
    """The conversation a conversation_group names; None for any other group."""
    prefix, _, rest = group.partition(".")
    return int(rest) if prefix == "chat" and rest.isdigit() else None


def user_group(user_id: int) -> str:
    """Every socket of one user: logout (session.end), read markers, new conversations."""
    return f"user.{user_id}"
