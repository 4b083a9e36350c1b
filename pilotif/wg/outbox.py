"""Where the device's parts put what they produce until `Device.take_output()`."""

from pilotif.wg.events import Output


class Outbox:
    """The output being gathered; `take` hands it over and starts afresh."""

    def __init__(self) -> None:
        self.out = self._new()

    def take(self) -> Output:
        """Everything gathered since the last call."""
        out, self.out = self.out, self._new()
        return out

    @staticmethod
    def _new() -> Output:
        return Output(datagrams=[], trains=[], packets=[], merged=[], events=[])
