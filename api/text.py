"""Text and JSON a request carries, read so that what is stored is what was sent.

Postgres text and JSONB cannot hold a NUL character, and a lone surrogate (which JSON can
spell as an escape, `"\\ud800"`) has no UTF-8 encoding: either would fail the insert and turn
a client's mistake into a server error. A key given twice in a JSON object would silently
take the last value. Every JSON document a request carries (a body, a form's `params` or
`watermark` field) is parsed by `loads`, and every multipart text field is checked with
`problem`, so these are refused naming where they are.
"""

from __future__ import annotations

import json
import re
from typing import Any

from api.errors import ApiError

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def problem(value: str) -> str | None:
    """What makes `value` unstorable, or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "a NUL character (\\u0000), which text cannot hold; remove it"
    return f"a lone surrogate (\\u{ord(char):04x}), which is not valid UTF-8 text"


def refuse(field: str, what: str) -> ApiError:
    return ApiError(422, "invalid_parameter", f"{field}: contains {what}", field)


class JsonError(ValueError):
    """A refused JSON document. `field` is None when it cannot be read as one object tree
    (bad syntax, a key given twice); else the path of a value that cannot be stored."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise JsonError(f"gives the key {key!r} more than once in one object; send it once")
            seen.add(key)
    return out


def loads(document: str | bytes) -> Any:
    """The parsed document: every key once, every string storable (JsonError otherwise)."""
    try:
        value = json.loads(document, object_pairs_hook=_unique_keys)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JsonError(f"is not valid JSON: {e}") from None
    if (found := find_unstorable(value)) is not None:
        path, what = found
        raise JsonError(f"contains {what}", path)
    return value


def find_unstorable(value: Any, path: str = "") -> tuple[str, str] | None:
    """(where, what) of the first string in a parsed JSON document that cannot be stored;
    `where` is a path such as `jobs[3].prompt` ("" for the document itself)."""
    if isinstance(value, str):
        what = problem(value)
        return None if what is None else (path, what)
    if isinstance(value, dict):
        for key, item in value.items():
            if (what := problem(key)) is not None:
                return path, f"a field name with {what}"
            if (found := find_unstorable(item, f"{path}.{key}" if path else key)) is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if (found := find_unstorable(item, f"{path}[{i}]")) is not None:
                return found
    return None


def parse_json(document: str | bytes, what: str = "the body", field: str | None = None) -> Any:
    """`loads`, refused with an ApiError: 400 malformed_json, or 422 naming the value that
    cannot be stored. `field` is where the document sits (a form field's name), if anywhere."""
    try:
        return loads(document)
    except JsonError as e:
        if e.field is None:
            raise ApiError(400, "malformed_json", f"{what} {e.message}", field) from None
        where = ".".join(p for p in (field, e.field) if p) or what
        raise refuse(where, e.message.removeprefix("contains ")) from None
