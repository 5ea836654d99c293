"""`/ws/inbox`: the conversation list, with unread counts, updated live."""

from __future__ import annotations

import datetime
from urllib.parse import parse_qs

from django.db import DatabaseError

from chat import fragments, selectors
from chat.groups import LAYER_ERRORS, conversation_group, conversation_id_of, user_group
from chat.sockets import CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHENTICATED, ResilientConsumer
from parley import dbcalls

_db = dbcalls.db  # bounded, and refused at once while the database is down


class InboxConsumer(ResilientConsumer):
    """`/ws/inbox`: the conversation list, with unread counts, updated live."""

    kind = "inbox"

    max_conversations = 200

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED, "unauthenticated")
            return
        self.user_id = user.pk
        self.username = user.get_username()
        try:
            ids = await _db(selectors.recent_conversation_ids)(self.user_id, self.max_conversations)
        except DatabaseError:
            await self.close(code=CLOSE_TRY_AGAIN_LATER)
            return
        await self.join_groups([user_group(self.user_id), *map(conversation_group, ids)])
        await self.accept()
        self.track()
        self.tasks.add(self.start_lifetime_timer())
        # Joined first, then caught up: rows that changed after the page was rendered.
        since = self._since_param()
        if since is not None:
            try:
                changed = await _db(selectors.conversations_changed_since)(
                    self.user_id, since, self.max_conversations
                )
            except DatabaseError:
                return
            for cid in changed:
                await self._send_row(cid)

    def _since_param(self):
        """`?since=<epoch ms>` from the page, as an aware datetime (None if absent or bad)."""
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        try:
            millis = int(query.get("since", [""])[0])
            return datetime.datetime.fromtimestamp(millis / 1000, tz=datetime.UTC)
        except (ValueError, OverflowError, OSError):
            return None

    async def disconnect(self, code: int) -> None:
        if not self.accepted or not hasattr(self, "user_id"):
            return
        for task in list(self.tasks):
            task.cancel()
        await self.leave_groups()

    async def _send_row(self, conversation_id: int) -> None:
        try:
            row = await _db(selectors.conversation_row)(
                self.user_id, self.username, conversation_id
            )
        except DatabaseError:
            return
        if row is not None:
            await self.send(text_data=fragments.conversation_row_html(row))

    async def chat_message(self, event: dict) -> None:
        await self._send_row(event["conversation_id"])

    async def inbox_read(self, event: dict) -> None:
        await self._send_row(event["conversation_id"])

    async def inbox_joined(self, event: dict) -> None:
        group = conversation_group(event["conversation_id"])
        if group not in self.groups_wanted:
            self.groups_wanted.append(group)
            try:
                await self.channel_layer.group_add(group, self.channel_name)
            except LAYER_ERRORS:
                self.rejoin_needed = True
        await self._send_row(event["conversation_id"])

    async def chat_typing(self, event: dict) -> None:
        pass

    async def chat_presence(self, event: dict) -> None:
        pass

    async def layer_recovered(self, event: dict) -> None:
        # Rows may have changed while we were not listening: refresh the whole list.
        ids = [cid for g in self.groups_wanted if (cid := conversation_id_of(g)) is not None]
        for cid in reversed(ids):
            await self._send_row(cid)
