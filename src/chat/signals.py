"""Model and auth signals that become events (chat.events): logging out ends that session's
sockets; a participant removed anyhow (a service, the admin, a deleted conversation) has
their sockets on the conversation closed."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete
from django.dispatch import receiver

from chat import events
from chat.models import Participant


@receiver(user_logged_out)
def end_session_sockets(sender, request, user, **kwargs) -> None:
    """The sockets of this session close with 4401; the user's other devices stay."""
    if user is None:
        return
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    events.broadcast_sync(events.session_ended(user_id=user.pk, session_key=session_key))


@receiver(post_delete, sender=Participant)
def revoke_removed_participant(sender, instance: Participant, **kwargs) -> None:
    """Once committed: the removed user's sockets on the conversation close with 4403, in
    every process, and their conversation lists drop it."""
    event = events.members(
        conversation_id=instance.conversation_id, removed=[instance.user_id], added=[]
    )
    transaction.on_commit(lambda: events.broadcast_sync(event))
