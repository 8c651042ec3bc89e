"""The v4.channel.k8s.io port-forward framing, as event-in/event-out scripts."""

from __future__ import annotations

import pytest

from bridged.carriers.portforward import CHANNEL_PREFIX, Data, PortForwardFraming, RemoteError
from bridged.errors import CarrierError

PORT = 2222
PREFIX = PORT.to_bytes(2, "little")


@pytest.mark.parametrize(("messages", "events"), [
    # the port announcement on each channel comes first and carries no event
    ([b"\x00" + PREFIX, b"\x01" + PREFIX], [None, None]),
    # data after the announcement, split anyhow
    ([b"\x00" + PREFIX, b"\x00SSH-2.0", b"\x00-x\r\n"], [None, Data(b"SSH-2.0"), Data(b"-x\r\n")]),
    # announcement and data in one message
    ([b"\x00" + PREFIX + b"hello"], [Data(b"hello")]),
    # an error from the kubelet
    ([b"\x01" + PREFIX, b"\x01an error occurred forwarding 2222"],
     [None, RemoteError("an error occurred forwarding 2222")]),
    # empty messages are ignored
    ([b"", b"\x00" + PREFIX, b"\x00"], [None, None, Data(b"")]),
])
def test_receive(messages: list[bytes], events: list[object]) -> None:
    framing = PortForwardFraming(PORT)
    assert [framing.receive(m) for m in messages] == events


@pytest.mark.parametrize(("message", "needle"), [
    (b"\x02" + PREFIX, "unexpected channel 2"),
    (b"\x00\x01", "had no port"),
    (b"\x00" + (80).to_bytes(2, "little"), "forwarded port 80, not 2222"),
])
def test_protocol_errors(message: bytes, needle: str) -> None:
    with pytest.raises(CarrierError, match=needle):
        PortForwardFraming(PORT).receive(message)


def test_outgoing_data_is_on_channel_zero() -> None:
    # (StreamTransport puts this before every message it assembles for the pod)
    assert CHANNEL_PREFIX == b"\x00"
