"""Entry points: settings, URLs, the ASGI/WSGI applications and the websocket server, which
put chat, parley and parley_runtime together. Nothing imports from here but Django."""
