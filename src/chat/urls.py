from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.conversation_list, name="conversation_list"),
    path("search", views.search, name="search"),
    path("c/new", views.conversation_new, name="conversation_new"),
    path("c/<int:conversation_id>/leave", views.conversation_leave, name="conversation_leave"),
    path("c/<int:conversation_id>", views.conversation_detail, name="conversation_detail"),
    path("c/<int:conversation_id>/add", views.participants_add, name="participants_add"),
    path("c/<int:conversation_id>/mute", views.conversation_mute, name="conversation_mute"),
    path(
        "c/<int:conversation_id>/m/<int:message_id>/edit",
        views.message_edit,
        name="message_edit",
    ),
    path(
        "c/<int:conversation_id>/m/<int:message_id>/delete",
        views.message_delete,
        name="message_delete",
    ),
    path(
        "c/<int:conversation_id>/history", views.conversation_history, name="conversation_history"
    ),
]
