from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.conversation_list, name="conversation_list"),
    path("search", views.search, name="search"),
    path("c/new", views.conversation_new, name="conversation_new"),
    path("c/<int:conversation_id>/leave", views.conversation_leave, name="conversation_leave"),
    path("c/<int:conversation_id>", views.conversation_detail, name="conversation_detail"),
    path(
        "c/<int:conversation_id>/history", views.conversation_history, name="conversation_history"
    ),
]
