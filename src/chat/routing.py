from django.urls import path

from chat import consumers, inbox

websocket_urlpatterns = [
    path("ws/chat/<int:conversation_id>", consumers.ChatConsumer.as_asgi()),
    path("ws/inbox", inbox.InboxConsumer.as_asgi()),
]
