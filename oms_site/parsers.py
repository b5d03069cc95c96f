"""Request parsers that refuse NUL characters, which PostgreSQL text cannot store.

Without this, a "\\u0000" in a JSON string (or a form field) reaches a query and psycopg raises
DataError: a 500 instead of a 400. Serializer CharFields already refuse NUL; these parsers cover
the views that hand the parsed body to services directly (orders, baskets, blocks, amendments).
"""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

NUL = "\x00"
NUL_MESSAGE = "The request must not contain NUL (0x00) characters."


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser (NaN and Infinity already refused), refusing NUL in keys and strings."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        if _has_nul(data):
            raise ParseError(NUL_MESSAGE)
        return data


class FormParser(parsers.FormParser):
    """DRF's form parser, refusing NUL in field names and values."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        if any(_has_nul(k) or _has_nul(v) for k, v in data.lists()):
            raise ParseError(NUL_MESSAGE)
        return data


class MultiPartParser(parsers.MultiPartParser):
    """DRF's multipart parser, refusing NUL in field names and values (files are the views')."""

    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        result = super().parse(stream, media_type, parser_context)
        if any(_has_nul(k) or _has_nul(v) for k, v in result.data.lists()):
            raise ParseError(NUL_MESSAGE)
        return result
