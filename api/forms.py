"""multipart/form-data read strictly: each field once, text fields in UTF-8 with nothing
unstorable, and a field over its size refused by name.

Starlette's parser takes the last of repeated fields, decodes text it cannot read as UTF-8 as
Latin-1, and reports an oversized field as "Part exceeded maximum size" without naming it;
each of those turned a client's mistake into a silently different job or a puzzle. This
parser keeps Starlette's streaming (files spool to disk, fields are bounded) and refuses
instead.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from api import text
from api.errors import ApiError


class _Refused(Exception):
    """Raised inside the parser's callbacks; carries the ApiError out of the parse."""

    def __init__(self, error: ApiError):
        super().__init__(error.message)
        self.error = error


class StrictMultiPartParser(MultiPartParser):
    def __init__(
        self,
        request: Request,
        *,
        max_files: int,
        max_fields: int,
        max_field_bytes: int,
        too_large: Callable[[str, int], ApiError],
    ):
        super().__init__(
            request.headers,
            request.stream(),
            max_files=max_files,
            max_fields=max_fields,
            max_part_size=max_field_bytes,
        )
        self._too_large = too_large
        self._names: set[str] = set()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + (end - start) > self.max_part_size:
            raise _Refused(self._too_large(part.field_name, self.max_part_size))
        super().on_part_data(data, start, end)

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        name = self._current_part.field_name
        if (what := text.problem(name)) is not None:
            raise _Refused(text.refuse("form", f"a field name with {what}"))
        if name in self._names:
            raise _Refused(duplicate(name))
        self._names.add(name)

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                value = bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise _Refused(
                    ApiError(
                        422, "invalid_parameter",
                        f"{part.field_name}: the text is not valid UTF-8; send form fields "
                        "as UTF-8", part.field_name,
                    )
                ) from None  # fmt: skip
            if (what := text.problem(value)) is not None:
                raise _Refused(text.refuse(part.field_name, what))
            self.items.append((part.field_name, value))
        else:
            super().on_part_end()


def duplicate(name: str) -> ApiError:
    return ApiError(
        422, "duplicate_field",
        f"{name} is given more than once; send each field once", name,
    )  # fmt: skip


async def read_form(
    request: Request,
    *,
    max_files: int,
    max_fields: int,
    max_field_bytes: int,
    too_large: Callable[[str, int], ApiError] | None = None,
) -> FormData:
    """The request's form; the caller closes it (`await form.close()`) to remove its files."""
    parser = StrictMultiPartParser(
        request,
        max_files=max_files,
        max_fields=max_fields,
        max_field_bytes=max_field_bytes,
        too_large=too_large or field_too_large,
    )
    try:
        return await parser.parse()
    except _Refused as e:
        raise e.error from None
    except MultiPartException as e:
        raise ApiError(
            400, "malformed_multipart", f"the multipart body is invalid: {e.message}"
        ) from None


def field_too_large(name: str, limit: int) -> ApiError:
    return ApiError(
        422, "invalid_parameter", f"{name}: the field is longer than {limit} bytes", name
    )
