"""`manage.py history_new_epoch`: after a restore or a failover to a replica that lagged.

The restored history may be older than what pages have shown: its sequence numbers will be
used again for new messages. A new epoch per conversation makes every page and socket start
over (docs/operations.md "Restore"). `make restore` runs it; run it yourself after a failover.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from chat.services import conversations_new_epoch


class Command(BaseCommand):
    help = "Give every conversation a new history epoch (after a restore or failover)."

    def handle(self, *args, **options) -> None:
        count = conversations_new_epoch()
        self.stdout.write(f"history_new_epoch: {count} conversations start a new epoch")
