"""A loopback server that answers each request with scripted raw bytes, for the protocol
corners no real agent produces: ``Connection: close``, an answer framed by the end of the
stream, a 101, bytes after the answer, an endless header block, a reset.

Built on the misbehaving servers' plumbing (tests/harness/misbehaving.py): the same thread
per connection, stop event, deadline and counters.
"""

from __future__ import annotations

from harness.misbehaving import _Conn, _Server


class ScriptedAnswers(_Server):
    """Answers the n-th request it reads (across connections) with ``answers[n]`` (the last
    one repeats), then keeps the connection, closes it (``close="fin"``) or resets it
    (``close="rst"``), ``close_delay`` seconds after the answer. ``hold=True`` keeps the
    connection open after the answer without reading further, so a client's next request on
    it gets no answer."""

    kind = "scripted-answers"

    def __init__(
        self,
        answers: list[bytes],
        *,
        close: str | None = None,
        close_delay: float = 0.0,
        hold: bool = False,
        max_duration: float = 60.0,
    ) -> None:
        super().__init__(max_duration=max_duration)
        self.answers = answers
        self.close_with = close
        self.close_delay = close_delay
        self.hold = hold
        self._answered = 0

    @property
    def answered(self) -> int:
        with self._lock:
            return self._answered

    def _serve(self, conn: _Conn) -> None:
        while (request := self._read_request(conn)) is not None:
            with self._lock:
                n = self._answered
                self._answered += 1
            conn.send(self.answers[min(n, len(self.answers) - 1)])
            if self.close_with is not None:
                if self.close_delay:
                    self._sleep(self.close_delay)  # the answer is read before the close
                conn.close(abort=self.close_with == "rst")
                return
            if self.hold:
                conn.wait_closed()
                return
            del request


def answer(status: str = "200 OK", body: bytes = b"true", *headers: str) -> bytes:
    """An HTTP/1.1 answer with a Content-Length and the given extra header lines."""
    head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
