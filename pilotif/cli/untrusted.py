"""Text other agents wrote (trust notes, messages, tasks, events, replies), made safe to
hand to an LLM: every character a reader cannot see or that rewrites what is shown
(controls other than newline and tab, format characters such as zero-width spaces, bidi
overrides and the invisible "tag" characters that can smuggle instructions, lone
surrogates, line separators) shows as a visible escape, and the fields holding such text
are named `untrusted_*` so the model and the person reading along know whose words they
are."""

import unicodedata
from collections.abc import Mapping
from typing import Any, Final

UNTRUSTED_PREFIX: Final = "untrusted_"
_KEPT_IN_TEXT: Final = "\n\t"
_HIDDEN_CATEGORIES: Final = frozenset(("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))
"""Controls, format characters (zero-width, bidi, tags), surrogates, private use, line and
paragraph separators."""
_BYTE_ESCAPE_BELOW: Final = 0x100
_BMP_ESCAPE_BELOW: Final = 0x10000


def _escape(char: str) -> str:
    code = ord(char)
    if code < _BYTE_ESCAPE_BELOW:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < _BMP_ESCAPE_BELOW else f"\\U{code:08x}"


def visible_text(text: str, keep: str = _KEPT_IN_TEXT) -> str:
    """`text` with every hidden or reordering character but those in `keep` shown as an
    escape (\\u200b)."""
    if text.isprintable():
        return text
    return "".join(
        _escape(char)
        if char not in keep and unicodedata.category(char) in _HIDDEN_CATEGORIES
        else char
        for char in text
    )


def visible(value: Any) -> Any:
    """A JSON value with every string in it (keys too) made visible_text."""
    if isinstance(value, str):
        return visible_text(value)
    if isinstance(value, Mapping):
        return {visible(key): visible(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [visible(item) for item in value]
    return value


def marked(row: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`row` made visible, with each of `fields` (the text a peer wrote) renamed
    `untrusted_FIELD`."""
    return {
        (UNTRUSTED_PREFIX + key if key in fields else key): value
        for key, value in visible(row).items()
    }
