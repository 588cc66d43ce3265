"""The DATA reader against a line-by-line reference, over many random splits of tricky input.

receive_data() works on blocks of lines for speed; the reference below reads one line at a
time exactly as RFC 5321 4.5.2 and docs/smtp.md describe (only CRLF '.' CRLF after a CRLF ends
the data; bare LF becomes CRLF; bare CR stays; a leading dot is dropped when more follows).
The bytes travel through a real socket pair, received in random small pieces so every
position of the end marker across reads is exercised.
"""
import io
import random
import socket

import pytest

from smtpd_worker.session import ConnectionLost
from smtpd_worker.session import Reader
from smtpd_worker.session import receive_data

TOKENS = [b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.\r", b"\n.\n", b"\r\n.\n", b"\n.\r\n",
          b"\r.\r", b"\r\n..\r\n", b"xyz", b" ", b"\x7f"]
TAIL = b"\r\n.\r\nNOOP\r\n"


def reference(stream):
    """(message, rest) the way a careful line-by-line server reads DATA."""
    out, position, previous_crlf = [], 0, True
    while True:
        end = stream.index(b"\n", position)
        line, position = stream[position:end + 1], end + 1
        crlf = line.endswith(b"\r\n")
        content = line[:-2] if crlf else line[:-1]
        if content == b"." and crlf and previous_crlf:
            return b"".join(out), stream[position:]
        if content.startswith(b".") and content != b".":
            content = content[1:]
        out.append(content + b"\r\n")
        previous_crlf = crlf


class PieceSocket:
    """A real socket whose recv hands back at most the next random piece size."""

    def __init__(self, sock, rng):
        self.sock, self.rng = sock, rng

    def recv(self, size):
        return self.sock.recv(min(size, self.rng.randint(1, 9)))


def read_through_socket(stream, rng):
    server, client = socket.socketpair()
    with server, client:
        client.sendall(stream)
        client.shutdown(socket.SHUT_WR)
        reader = Reader(PieceSocket(server, rng), lambda: None)
        spool = io.BytesIO()
        refusal = receive_data(reader, spool, max_size=10_000, max_line=1000)
        assert refusal is None
        rest = b""
        while True:
            try:
                rest += reader.chunk()
            except ConnectionLost:  # the end of the stream
                break
        return spool.getvalue(), rest


@pytest.mark.parametrize("seed", range(300))
def test_data_reader_matches_line_by_line_reference(seed):
    rng = random.Random(seed)
    stream = b"".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 40))) + TAIL
    assert read_through_socket(stream, rng) == reference(stream)


def test_data_reader_reference_sanity():
    assert reference(b"a\n.\nb\r\n.\r\nNOOP\r\n") == (b"a\r\n.\r\nb\r\n", b"NOOP\r\n")
    assert reference(b"..x\r\n.\r\n") == (b".x\r\n", b"")
