"""Creates load-test users and rooms and writes their credentials as JSON.

    manage.py seed_loadtest --rooms 10 --members 10 --password secret --out users.json \
        [--messages 50]

--messages N tops every room up to N stored messages (sent in turn by its members), for
benchmarks of pages with history.

Writes a list of {"username", "password", "conversation"}. Running it again reuses the same
users and rooms (and resets their passwords), so it never fails on existing data.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from chat import services
from chat.models import Conversation, Participant


class Command(BaseCommand):
    help = "Create R conversations of M members each and write their credentials as JSON."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rooms", type=int, required=True)
        parser.add_argument("--members", type=int, required=True)
        parser.add_argument("--password", required=True)
        parser.add_argument("--out", required=True, help="JSON file to write ('-' for stdout)")
        parser.add_argument("--prefix", default="lt", help="username prefix (default: lt)")
        parser.add_argument(
            "--messages", type=int, default=0, help="top each room up to N messages (default 0)"
        )

    def handle(
        self,
        *args,
        rooms: int,
        members: int,
        password: str,
        out: str,
        prefix: str,
        messages: int = 0,
        **options,
    ) -> None:
        if rooms < 1 or members < 2:
            raise CommandError("--rooms must be at least 1 and --members at least 2")
        if messages < 0:
            raise CommandError("--messages must not be negative")
        User = get_user_model()
        hashed = make_password(password)  # one hash for all: seeding stays fast
        records: list[dict] = []
        with transaction.atomic():
            for r in range(rooms):
                conversation, _ = Conversation.objects.get_or_create(title=f"{prefix}-room-{r}")
                senders = []
                for m in range(members):
                    username = f"{prefix}_r{r}_m{m}"
                    user, _ = User.objects.update_or_create(
                        username=username, defaults={"password": hashed, "is_active": True}
                    )
                    Participant.objects.get_or_create(conversation=conversation, user=user)
                    senders.append(user)
                    records.append(
                        {
                            "username": username,
                            "password": password,
                            "conversation": conversation.pk,
                        }
                    )
                stored = conversation.messages.count()
                for n in range(stored, messages):
                    services.message_create(
                        conversation_id=conversation.pk,
                        sender=senders[n % members],
                        body=f"Seeded message {n + 1} in {conversation.title}.",
                    )
        text = json.dumps(records, indent=1)
        if out == "-":
            self.stdout.write(text)
        else:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(text)
            self.stderr.write(f"wrote {len(records)} users in {rooms} rooms to {out}")
