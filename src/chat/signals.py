"""Logging out over HTTP ends that user's open sockets at once."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver

logger = logging.getLogger(__name__)


@receiver(user_logged_out)
def end_user_sockets(sender, request, user, **kwargs) -> None:
    if user is None:
        return
    from chat.groups import user_group

    try:
        async_to_sync(get_channel_layer().group_send)(user_group(user.pk), {"type": "session.end"})
    except Exception:  # the layer being down must not break logging out
        logger.exception("could not end the user's sockets", extra={"user": user.pk})
