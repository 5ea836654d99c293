"""Which seeded users take part in a run (from `manage.py seed_loadtest` JSON)."""

from __future__ import annotations


def select_users(records: list[dict], rooms: int, members: int) -> list[dict]:
    """The first `rooms` rooms and the first `members` of each, in file order; each record
    gains `room_size`, the number of its room's members taking part."""
    by_room: dict[int, list[dict]] = {}
    for record in records:
        missing = {"username", "password", "conversation"} - set(record)
        if missing:
            raise ValueError(f"users file record {record!r} lacks {sorted(missing)}")
        by_room.setdefault(int(record["conversation"]), []).append(record)
    chosen = list(by_room.items())[: rooms or None]
    if rooms and len(chosen) < rooms:
        raise ValueError(f"--rooms {rooms}, but the users file has only {len(chosen)} rooms")
    selected = []
    for room, people in chosen:
        if members and len(people) < members:
            raise ValueError(f"--members {members}, but room {room} has only {len(people)}")
        people = people[: members or None]
        if len(people) < 2:
            raise ValueError(f"room {room} needs at least 2 members to test fan-out")
        selected += [{**p, "conversation": room, "room_size": len(people)} for p in people]
    return selected
