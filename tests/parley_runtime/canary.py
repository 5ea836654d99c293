"""What the canary tests compare: the code of a library function parley_runtime copied or
relies on, as a fingerprint of its syntax tree (docstrings, comments and formatting left
out). A changed fingerprint means the library changed that code: re-read it, carry the
change into parley_runtime (or drop the piece), then record the new fingerprint."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap


def fingerprint(function) -> str:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]  # the docstring
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:16]
