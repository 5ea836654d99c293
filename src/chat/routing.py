from django.urls import path

from chat import consumers

websocket_urlpatterns = [
    path("ws/chat/<int:conversation_id>", consumers.ChatConsumer.as_asgi()),
    path("ws/inbox", consumers.InboxConsumer.as_asgi()),
]
