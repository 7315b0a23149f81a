"""Request bodies: read whole before any turn, within a deadline, and parsed as strict
JSON."""

from __future__ import annotations

import json
import re
from typing import Any

import trio
from starlette.requests import ClientDisconnect, Request

from dotdo.errors import DotdoError, InvalidInput, InvalidValue, RequestTimeout

# A JSON escape of a UTF-16 surrogate: the only way a lone surrogate (text that is not
# Unicode, and that no database, encoder or socket will take) gets into a parsed body;
# UTF-8 itself cannot encode one. Pairs are fine: json joins them into one character.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


async def read_body(request: Request, seconds: float) -> bytes:
    """The request's whole body, which must arrive within ``seconds``.

    hypercorn's read timeout bounds each wait for more data, not the whole body: a
    client sending a byte now and then would otherwise hold its connection (and, for an
    actor's ``fetch``, the actor's turn) for as long as it likes.

    Raises:
        RequestTimeout: The body did not arrive within ``seconds``.
        InvalidInput: The connection closed first (the client went away, or sent
            nothing for the read timeout).
        BodyTooLarge: The body is over the limit (raised by ``BodyLimit`` as it grows).
    """
    with trio.move_on_after(seconds):
        try:
            return await request.body()
        except ClientDisconnect:
            raise InvalidInput("the request body did not arrive whole: the connection closed first") from None
    raise RequestTimeout(f"the request body did not arrive within {seconds:g} s")


def _finite(text: str) -> float:
    """A JSON number as a float, refused past a float's range (it would be infinity)."""
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise InvalidInput(f"the request body holds a number out of range: {text[:40]}")
    return value


def _not_a_number(name: str) -> Any:
    """Refuse NaN, Infinity and -Infinity, which Python's json reads but JSON lacks."""
    raise InvalidInput(f"the request body holds {name}, which is not JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON: no NaN or Infinity (Python's json accepts them, then no result
    holding them can be sent back), no numbers beyond a float's range.

    Raises:
        InvalidInput: Not JSON, not UTF-8, or nested too deeply to decode.
        InvalidValue: A string (or key) holds a lone surrogate (``"\\ud800"``): JSON
            can spell it, but it is not Unicode text.
    """
    try:
        # Decoded here, strictly: json.loads would take UTF-16 and UTF-32 too, and
        # decode UTF-8 with "surrogatepass", letting encoded surrogates through.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("the request body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_not_a_number, parse_float=_finite)
    except DotdoError:
        raise
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply") from None
    except ValueError:
        raise InvalidInput("the request body is not valid JSON") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_unicode(value)
    return value


def _check_unicode(value: Any) -> None:
    """Refuse ``value`` if any string in it, key or value, is not valid Unicode."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            texts = [item]
        elif isinstance(item, dict):
            texts = list(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
            continue
        else:
            continue
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidValue(
                    f"the request body holds text that is not valid Unicode (a lone surrogate, \\u{ord(text[exc.start]):04x})"
                ) from None
