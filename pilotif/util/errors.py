"""The one error class with a code: every refusal that programs act on (a control reply,
`--json`, a service's answer) carries a short `code` and a `hint` that says what to do."""

from typing import Any


class CodedError(Exception):
    """A refusal with a machine-readable `code` and a `hint` for people (may be empty)."""

    def __init__(self, code: str, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint

    def reply(self) -> dict[str, Any]:
        """The control API's reply that refuses with this error."""
        return {"ok": False, "error": str(self), "code": self.code, "hint": self.hint}
