"""The demo's HTTP/2 parts: a cleartext HTTP/2 service that says who it is, and a client that
sends several requests as streams of *one* connection — so the demo can show the relay routing
each stream on its own. Built on ``h2``, as the relay's router is; only what the demo needs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h2.config
import h2.connection
import h2.events


async def h2c_service(name: str) -> asyncio.Server:
    """Answers every stream with ``{"served_by": name, "path": ...}``."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        paths: dict[int, str] = {}
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        paths[event.stream_id] = next(
                            (str(v) for n, v in event.headers if n == ":path"), "/")
                    elif isinstance(event, h2.events.StreamEnded):
                        body = json.dumps({"served_by": name,
                                           "path": paths.pop(event.stream_id)}).encode()
                        conn.send_headers(event.stream_id, [
                            (":status", "200"), ("content-type", "application/json"),
                            ("content-length", str(len(body)))])
                        conn.send_data(event.stream_id, body, end_stream=True)
                writer.write(conn.data_to_send())
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def h2c_get_all(port: int, requests: list[tuple[str, dict[str, str]]]) -> list[Any]:
    """GET each (path, headers) as a stream of one connection, all at once; their JSON
    answers, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    streams: list[int] = []
    for path, headers in requests:
        sid = conn.get_next_available_stream_id()
        streams.append(sid)
        conn.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                                (":authority", f"127.0.0.1:{port}"), *headers.items()],
                          end_stream=True)
    writer.write(conn.data_to_send())
    bodies: dict[int, bytes] = {sid: b"" for sid in streams}
    ended: set[int] = set()
    try:
        while len(ended) < len(streams):
            data = await asyncio.wait_for(reader.read(65536), 10)
            if not data:
                raise ConnectionError("the relay closed the HTTP/2 connection")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length,
                                                   event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"stream {event.stream_id} was reset")
            writer.write(conn.data_to_send())
    finally:
        writer.close()
    return [json.loads(bodies[sid]) for sid in streams]
