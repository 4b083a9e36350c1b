"""The services' wire format: newline-delimited JSON over TCP.

Every request and every answer is one JSON object on one line: UTF-8, ended by `\\n`, at
most MAX_LINE_BYTES. A request names its operation (`{"op": "message", "text": "hi"}`);
an answer says `{"ok": true, ...}` or `{"ok": false, "code": ..., "error": ...}`. One
connection may carry many requests, answered in order. Why lines of JSON: every language
has a JSON library and a way to read a line from a socket, `nc` and `socat` speak it, and
a person can read a capture; framing by newline needs no length arithmetic.

Text that is not one JSON object per line gets an answer with code `bad_request`, and
the connection is closed.
"""

import asyncio
import json
from typing import Any, Final

MAX_LINE_BYTES: Final = 64 * 1024


class WireError(Exception):
    """A line that is not a request; `code` goes in the answer."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode(message: dict[str, Any]) -> bytes:
    """One message as its line."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The object on one line (its `\\n` included or not); WireError if it is not one."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("bad_request", "a line is one JSON object") from None
    if not isinstance(message, dict):
        raise WireError("bad_request", "a line is one JSON object")
    return message


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, None at the end of the stream; WireError for a line that is too
    long, cut short, or not a JSON object. The reader's limit must be MAX_LINE_BYTES."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise WireError("bad_request", "the stream ended inside a line") from None
    except asyncio.LimitOverrunError:
        raise WireError("too_large", f"a line is at most {MAX_LINE_BYTES} bytes") from None
    return decode(line)


def error_answer(code: str, error: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": error}
