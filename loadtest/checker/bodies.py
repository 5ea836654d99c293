"""Message texts: random sizes up to the maximum length, with characters that escape to
several bytes in HTML (`"` is `&quot;`, `'` `&#x27;`, `<` `&lt;`, `&` `&amp;`) and multi-byte
UTF-8 (accents, CJK, emoji outside the BMP, flags and skin tones as several code points).

Lengths count code points, as the server and chat.js do. A text never starts or ends with
whitespace (the server strips it) and holds no carriage return (linebreaksbr would turn it
into a newline).
"""

from __future__ import annotations

import random
import string

ASCII = string.ascii_letters + string.digits + "     .,!?-:;()"
HTML = "\"'<>&"
MULTI = list("éßøñüç€—ω漢字語日本中文한국어😀🎉👍🏽🚀🇺🇳❤️") + ["\u200d", "\U0001f9d1"]
TORTURE = ['"', "'", "<", "&", "😀", "漢"]

# (weight, kind)
SIZES = [(30, "short"), (30, "medium"), (25, "long"), (10, "max"), (5, "torture")]
LONG_SIZES = [(50, "max"), (50, "torture")]


class Bodies:
    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.counts: dict[str, int] = {}

    def body(self, rng: random.Random, who: str, long: bool = False) -> str:
        """A text; `long`: only the longest kinds (a room where people paste long texts)."""
        n = self.counts[who] = self.counts.get(who, 0) + 1
        prefix = f"{who}#{n} "
        room = self.max_length - len(prefix)
        sizes = LONG_SIZES if long else SIZES
        kind = rng.choices([k for _, k in sizes], weights=[w for w, _ in sizes])[0]
        if kind == "torture":
            return prefix + rng.choice(TORTURE) * room
        length = {
            "short": lambda: rng.randint(1, 60),
            "medium": lambda: rng.randint(60, 600),
            "long": lambda: rng.randint(600, room - 1),
            "max": lambda: room,
        }[kind]()
        length = min(length, room)
        html_w, multi_w = rng.choice([(0.03, 0.03), (0.15, 0.1), (0.4, 0.3)])
        newline_w = rng.choice([0.0, 0.01])
        pools = [ASCII, HTML, MULTI, "\n"]
        weights = [1 - html_w - multi_w - newline_w, html_w, multi_w, newline_w]
        chars = [rng.choice(pool) for pool in rng.choices(pools, weights=weights, k=length)]
        if chars[-1].isspace() or chars[-1] == "\u200d":
            chars[-1] = "x"
        return prefix + "".join(chars)
