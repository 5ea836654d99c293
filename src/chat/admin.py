from django.contrib import admin

from chat.models import Conversation, Message, Participant


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


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "seq", "sender", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["body", "sender__username"]
    raw_id_fields = ["conversation", "sender"]
    readonly_fields = ["seq", "client_id", "created_at"]
    list_select_related = ["sender"]


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    """Deleting a participant here (or from a conversation's inline) removes them: their
    sockets on the conversation close with 4403 at once (chat.signals)."""

    list_display = ["id", "conversation", "user", "last_read_seq", "joined_at"]
    raw_id_fields = ["conversation", "user"]
