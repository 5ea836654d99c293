import json

import pytest
from django.core.management import call_command

from chat.models import Conversation, Participant

pytestmark = pytest.mark.django_db


def test_seed_loadtest_writes_credentials_and_can_run_twice(tmp_path):
    out = tmp_path / "users.json"
    call_command("seed_loadtest", rooms=3, members=4, password="pw-123456", out=str(out))
    first = json.loads(out.read_text())
    call_command("seed_loadtest", rooms=3, members=4, password="pw-123456", out=str(out))
    second = json.loads(out.read_text())
    assert first == second and len(first) == 12
    assert set(first[0]) == {"username", "password", "conversation"}
    rooms = {r["conversation"] for r in first}
    assert len(rooms) == 3 and Conversation.objects.count() == 3
    for cid in rooms:
        members = {r["username"] for r in first if r["conversation"] == cid}
        assert (
            set(
                Participant.objects.filter(conversation_id=cid).values_list(
                    "user__username", flat=True
                )
            )
            == members
        )
    from django.contrib.auth import authenticate

    assert authenticate(username=first[0]["username"], password="pw-123456") is not None


def test_seed_loadtest_tops_rooms_up_to_n_messages_in_sequence(tmp_path):
    out = tmp_path / "users.json"
    call_command("seed_loadtest", rooms=2, members=3, password="pw", out=str(out), messages=5)
    call_command("seed_loadtest", rooms=2, members=3, password="pw", out=str(out), messages=7)
    for conversation in Conversation.objects.all():
        seqs = list(conversation.messages.order_by("seq").values_list("seq", flat=True))
        assert seqs == list(range(1, 8))  # topped up to 7, not 5 + 7
        conversation.refresh_from_db()
        assert conversation.last_seq == 7
        senders = set(conversation.messages.values_list("sender__username", flat=True))
        assert len(senders) == 3  # every member sent some
