from django.contrib import admin

from chat.models import Conversation, Message, MessageRevision, Participant


class ParticipantInline(admin.TabularInline):
    model = Participant
    extra = 0
    raw_id_fields = ["user"]


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "last_seq", "last_message_at", "created_at"]
    search_fields = ["title", "participants__username"]
    inlines = [ParticipantInline]
    readonly_fields = [
        "created_by",
        "last_seq",
        "last_message_at",
        "last_message_preview",
        "last_message_sender",
    ]


class MessageRevisionInline(admin.TabularInline):
    """The text a message had before each edit or delete: for moderators only."""

    model = MessageRevision
    extra = 0
    can_delete = False
    readonly_fields = ["change", "replaced_at", "body"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    """Entries of conversations' streams. Changes go through the app (edit, delete, people),
    which numbers and publishes them: here they are read only."""

    list_display = ["id", "conversation", "seq", "kind", "sender", "created_at", "edited_at"]
    list_filter = ["kind", "created_at"]
    search_fields = ["body", "sender__username"]
    raw_id_fields = ["conversation", "sender", "target"]
    readonly_fields = [
        "seq",
        "kind",
        "target",
        "client_id",
        "created_at",
        "edited_at",
        "deleted_at",
    ]
    list_select_related = ["sender"]
    inlines = [MessageRevisionInline]


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    """Deleting a participant here (or from a conversation's inline) removes them: their
    sockets on the conversation close with 4403 at once (chat.signals)."""

    list_display = ["id", "conversation", "user", "last_read_seq", "joined_at"]
    raw_id_fields = ["conversation", "user"]
