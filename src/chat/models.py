from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models


def new_epoch() -> str:
    return secrets.token_hex(4)


class Conversation(models.Model):
    """A 1:1 or group conversation.

    `last_seq` is the sequence counter: each stored message takes `last_seq + 1` in the same
    transaction (the row lock on the conversation serialises concurrent senders), so
    sequences are gapless and strictly increasing per conversation.
    """

    title = models.CharField(max_length=200, blank=True)
    participants = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Participant", related_name="conversations"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Who started it (None for conversations from before this field, or a deleted user):
    # conversations a user may start are counted per window (services.conversation_start).
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    last_seq = models.PositiveBigIntegerField(default=0)
    # Which history `last_seq` counts in. A restore (or a failover to a replica that lagged)
    # brings back an older history whose sequence numbers pages have already seen: a new
    # epoch tells every page and socket to start over instead of skipping "seen" numbers.
    # Random, not a counter: a restored counter could come back to a value already used.
    # db_default: rows that existed before it (and ones the previous release inserts during
    # a rolling upgrade) start in the epoch "", as good as any until a restore replaces it.
    epoch = models.CharField(max_length=16, default=new_epoch, db_default="")
    last_message_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_message_preview = models.CharField(max_length=140, blank=True)
    last_message_sender = models.CharField(max_length=150, blank=True)
    # A 1:1 conversation stays between its two people: nobody can be added to it.
    is_direct = models.BooleanField(default=False, db_default=False)

    class Meta:
        ordering = ["-last_message_at", "-id"]
        indexes = [models.Index(fields=["created_by", "created_at"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"


class Participant(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    joined_at = models.DateTimeField(auto_now_add=True)
    # Read marker: the highest sequence this participant has seen.
    last_read_seq = models.PositiveBigIntegerField(default=0)
    # The newest message that mentioned this participant by `@username` (0: none). Marked
    # in the list while it is above the read marker. db_default: the previous release
    # inserts participants without it during a rolling upgrade.
    last_mention_seq = models.PositiveBigIntegerField(default=0, db_default=0)
    # Muted: still counted unread, but no browser notification unless mentioned.
    muted = models.BooleanField(default=False, db_default=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["conversation", "user"], name="uniq_participant"),
        ]
        indexes = [models.Index(fields=["user", "conversation"])]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.conversation_id}"


class Message(models.Model):
    """One entry of a conversation's stream, numbered by `seq` (gapless per conversation).

    Most are what someone wrote (`kind` "message"). The rest record a change, so that it is
    stored before it is shown and replayed after `?after=` like a message: "edit" and
    "delete" point at the message they change (`target`) and carry its new text ("" for a
    delete); "added", "left" and "removed" are a change of people, `body` the line pages
    show. An edited or deleted message keeps its own row and number: a delete empties it
    (a tombstone), so sequences stay gapless.
    """

    MESSAGE = "message"
    EDIT = "edit"
    DELETE = "delete"
    ADDED = "added"
    LEFT = "left"
    REMOVED = "removed"
    KINDS = [(k, k) for k in (MESSAGE, EDIT, DELETE, ADDED, LEFT, REMOVED)]
    CHANGES = (EDIT, DELETE)  # entries that change another one, never shown by themselves
    PEOPLE = (ADDED, LEFT, REMOVED)

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    sender = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages"
    )
    seq = models.PositiveBigIntegerField()
    # Client-generated idempotency key: a retried send is stored once.
    client_id = models.UUIDField(null=True, blank=True)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    # db_default: the stores insert with SQL that names only the columns every release has.
    kind = models.CharField(max_length=8, choices=KINDS, default=MESSAGE, db_default=MESSAGE)
    target = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="changes"
    )
    edited_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["conversation", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="uniq_message_seq"),
            models.UniqueConstraint(
                fields=["conversation", "sender", "client_id"], name="uniq_message_client_id"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} in {self.conversation_id}"


class MessageRevision(models.Model):
    """A message's text before an edit or a delete, for moderators (the admin): what pages
    were shown and no longer are."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="revisions")
    body = models.TextField()
    replaced_at = models.DateTimeField()
    change = models.CharField(max_length=8, choices=Message.KINDS)

    class Meta:
        ordering = ["message", "replaced_at", "id"]

    def __str__(self) -> str:
        return f"{self.change} of {self.message_id} at {self.replaced_at:%Y-%m-%d %H:%M:%S}"
