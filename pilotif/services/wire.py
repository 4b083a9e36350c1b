"""The services' wire format: newline-delimited JSON over TCP.

Every request and every answer is one JSON object on one line: UTF-8, ended by `\\n`, at
most MAX_LINE_BYTES. A request names its operation (`{"op": "message", "text": "hi"}`);
an answer says `{"ok": true, ...}` or `{"ok": false, "code": ..., "error": ...}`. One
connection may carry many requests, answered in order. Why lines of JSON: every language
has a JSON library and a way to read a line from a socket, `nc` and `socat` speak it, and
a person can read a capture; framing by newline needs no length arithmetic.

A line that is not one JSON object gets an answer with code `bad_request`, and the next
line is read as usual: invalid UTF-8, a lone surrogate (`"\\ud800"`: no UTF-8 can carry
it, so no answer or event could), nesting deeper than MAX_NESTING, a number JSON
cannot carry (NaN, Infinity, `1e999`, an integer of more than MAX_INTEGER_DIGITS digits).
A line longer than MAX_LINE_BYTES, or a stream cut inside a line, ends the connection
(the stream is no longer at a line).
"""

import asyncio
import json
import math
from typing import Any, Final

from pilotif.util.errors import CodedError

MAX_LINE_BYTES: Final = 64 * 1024
MAX_NESTING: Final = 64
"""Objects and arrays inside one another, at most."""
MAX_INTEGER_DIGITS: Final = 64
_OBJECT: Final = "a line is one JSON object"
_TOO_DEEP: Final = f"{_OBJECT}, nested at most {MAX_NESTING} deep"


class WireError(CodedError):
    """A line that is not a request; `code` goes in the answer. `at_line`: the stream is
    still at the start of a line (the next request can be read)."""

    def __init__(self, code: str, message: str, *, at_line: bool = True) -> None:
        super().__init__(code, message)
        self.at_line = at_line


def encode(message: dict[str, Any]) -> bytes:
    """One message as its line."""
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The object on one line (its `\\n` included or not); WireError if it is not one, or
    holds what no answer could carry (see the module docstring)."""
    try:
        message = json.loads(line, parse_int=_integer, parse_float=_finite, parse_constant=_nan)
    except RecursionError:
        raise WireError("bad_request", _TOO_DEEP) from None
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise WireError("bad_request", _reason(error)) from None
    if not isinstance(message, dict):
        raise WireError("bad_request", _OBJECT)
    if _nesting(message) > MAX_NESTING:
        raise WireError("bad_request", _TOO_DEEP)
    try:
        json.dumps(message, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise WireError("bad_request", f"{_OBJECT} in UTF-8: no lone surrogates") from None
    return message


def _nesting(value: object) -> int:
    """How deep arrays and objects nest in a decoded value (without recursion)."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
    return deepest


class _Unrepresentable(ValueError):
    """A number that JSON, or the peer's language, cannot carry."""


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _Unrepresentable(f"an integer has at most {MAX_INTEGER_DIGITS} digits")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Unrepresentable("a number is finite")
    return value


def _nan(text: str) -> float:
    raise _Unrepresentable(f"{text} is not JSON")


def _reason(error: ValueError) -> str:
    if isinstance(error, _Unrepresentable):
        return f"{_OBJECT}: {error}"
    if isinstance(error, UnicodeDecodeError):
        return f"{_OBJECT} in UTF-8"
    return _OBJECT


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, None at the end of the stream; WireError for a line that is too
    long, cut short, or not a JSON object. The reader's limit must be MAX_LINE_BYTES."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise WireError("bad_request", "the stream ended inside a line", at_line=False) from None
    except asyncio.LimitOverrunError:
        raise WireError(
            "too_large", f"a line is at most {MAX_LINE_BYTES} bytes", at_line=False
        ) from None
    return decode(line)


def error_answer(code: str, error: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": error}
