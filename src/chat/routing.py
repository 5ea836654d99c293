from django.urls import path, re_path

from chat import consumers, sockets

websocket_urlpatterns = [
    path("ws/chat/<int:conversation_id>", consumers.ChatConsumer.as_asgi()),
    path("ws/inbox", consumers.InboxConsumer.as_asgi()),
    re_path(r"", sockets.no_such_socket),  # last: any other path is refused with 4404
]
