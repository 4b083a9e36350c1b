"""The one error of the port mapping codecs: an answer that is not one (peer garbage,
to count by `code` and drop) or a gateway's refusal (`result` holds its code)."""

from pilotif.util.errors import CodedError


class PortMapError(CodedError):
    """A gateway's answer that gives no mapping; `code` is the reason counted
    ('truncated', 'unexpected', 'refused', 'malformed')."""

    def __init__(self, code: str, message: str, *, result: int | None = None) -> None:
        super().__init__(code, message)
        self.result = result
        """The gateway's result code, for a refusal."""
