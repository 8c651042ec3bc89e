"""Mirror mode's pairing of the laptop's and the cluster's answers, whichever comes first."""

from __future__ import annotations

import base64
import json

from bridged.capture.mirror import MirrorPairs
from bridged.capture.model import Captured, CaptureSettings, Message
from bridged.protocol import MIRROR_HEADER, MirrorAnswer

SETTINGS = CaptureSettings(redact_json_paths=("$.token",))


def _copy(mirror: str, record_id: int = 0) -> Captured:
    return Captured(intercept="orders", started=0.0, method="POST", target="/o", status=201,
                    request=Message(headers=((MIRROR_HEADER, mirror),)), id=record_id)


def _answer(mirror: str) -> MirrorAnswer:
    body = json.dumps({"who": "cluster", "token": "t0ps3cret"}).encode()
    return MirrorAnswer(intercept_id="i", mirror_id=mirror, status=200,
                        headers=(("content-type", "application/json"),
                                 ("authorization", "Bearer x")),
                        body_b64=base64.b64encode(body).decode(), size=len(body))


def test_the_cluster_answer_after_the_record_updates_it_redacted() -> None:
    pairs = MirrorPairs(SETTINGS)
    record = pairs.record(_copy("m1"))
    assert record.kind == "mirror" and record.cluster is None
    pairs.stored(_copy("m1", record_id=7))
    record_id, fields = pairs.answer(_answer("m1")) or (0, {})
    assert record_id == 7 and fields["cluster_status"] == 200
    cluster = fields["cluster"]
    assert json.loads(cluster.body) == {"who": "cluster", "token": "[redacted]"}
    assert dict(cluster.headers)["authorization"] == "[redacted]"
    assert pairs.answer(_answer("m1")) is None  # paired once


def test_an_answer_first_waits_for_its_record() -> None:
    pairs = MirrorPairs(SETTINGS)
    assert pairs.answer(_answer("m2")) is None
    record = pairs.record(_copy("m2"))
    assert record.kind == "mirror" and record.cluster_status == 200
    assert record.cluster is not None and b"t0ps3cret" not in record.cluster.body


def test_a_request_that_is_no_copy_is_left_alone_and_waiting_is_bounded() -> None:
    pairs = MirrorPairs(SETTINGS, pending=2)
    plain = Captured(intercept="orders", started=0.0, method="GET", target="/")
    assert pairs.record(plain) is plain
    for n in range(3):
        pairs.answer(_answer(f"a{n}"))
    assert pairs.record(_copy("a0")).cluster is None  # the oldest was forgotten
    assert pairs.record(_copy("a2")).cluster is not None
