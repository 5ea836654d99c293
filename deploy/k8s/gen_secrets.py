"""Write an overlay's git-ignored secrets.env from its secrets.env.example.

Every `generate-me-<name>` placeholder becomes a fresh random value; the same placeholder
gets the same value everywhere in the file (so POSTGRES_PASSWORD and the password inside
DATABASE_URL agree). `change-me-*` values are yours to fill in (managed services' URLs and
credentials): they are listed at the end. An existing secrets.env is never overwritten.

    python deploy/k8s/gen_secrets.py deploy/k8s/overlays/dev
"""

from __future__ import annotations

import re
import secrets
import sys
from pathlib import Path

PLACEHOLDER = re.compile(r"generate-me-[a-z0-9-]+")
TO_FILL = re.compile(r"change-me-[a-z0-9-]+")


def render(example: str) -> str:
    values: dict[str, str] = {}

    def fresh(match: re.Match[str]) -> str:
        # URL-safe, so a value can sit inside DATABASE_URL; 64 chars passes Django's check.
        return values.setdefault(match.group(0), secrets.token_urlsafe(48))

    return PLACEHOLDER.sub(fresh, example)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    overlay = Path(argv[0])
    example, target = overlay / "secrets.env.example", overlay / "secrets.env"
    if not example.is_file():
        print(f"gen_secrets: no {example}: is {overlay} an overlay directory?", file=sys.stderr)
        return 2
    if target.exists():
        print(
            f"gen_secrets: {target} exists; left as it is (delete it to start over)",
            file=sys.stderr,
        )
        return 1
    text = render(example.read_text())
    target.write_text(text)
    target.chmod(0o600)
    print(f"gen_secrets: wrote {target}")
    todo = sorted(
        {
            line.split("=", 1)[0]
            for line in text.splitlines()
            if TO_FILL.search(line) and not line.startswith("#")
        }
    )
    if todo:
        print(f"gen_secrets: now fill in {', '.join(todo)} (change-me-* values) in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
