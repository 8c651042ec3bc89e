"""Mirror mode's two answers, paired: the laptop's (the tap records the copy it received, which
carries ``x-bridged-mirror: <id>``) and the cluster's (the relay sends it in a MirrorAnswer,
once both ended). The tap's record nearly always comes first; whichever is first waits here,
bounded, for the other. Pure: the caller stores and updates the records."""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections import OrderedDict
from typing import Any

from ..protocol import MIRROR_HEADER, MirrorAnswer
from .bodies import redact_body, redact_header_names
from .model import Captured, CaptureSettings, Message

#: halves waiting for their other half: past it the oldest is forgotten (its record stays,
#: without the cluster's answer). A copy's two answers arrive within its time-out (30 s)
PENDING = 1024


def mirror_id(record: Captured) -> str:
    """The id a copy carries, or "" for a request that is no copy."""
    for name, value in record.request.headers:
        if name.lower() == MIRROR_HEADER:
            return value.strip()
    return ""


class MirrorPairs:
    def __init__(self, settings: CaptureSettings, pending: int = PENDING) -> None:
        self.settings = settings
        self.pending = pending
        self._records: OrderedDict[str, int] = OrderedDict()  # mirror id → stored record id
        self._answers: OrderedDict[str, MirrorAnswer] = OrderedDict()  # came first

    def record(self, record: Captured) -> Captured:
        """The tap's record of a request: a copy is marked "mirror", with the cluster's answer
        if it came first. Call :meth:`stored` once it has its id."""
        key = mirror_id(record)
        if not key:
            return record
        record = dataclasses.replace(record, kind="mirror")
        answer = self._answers.pop(key, None)
        return dataclasses.replace(record, **self.fields(answer)) if answer else record

    def stored(self, record: Captured) -> None:
        key = mirror_id(record)
        if key and record.id and record.cluster is None:
            self._remember(self._records, key, record.id)

    def answer(self, answer: MirrorAnswer) -> tuple[int, dict[str, Any]] | None:
        """The cluster's answer: (the record to update, its new fields), or None when the
        record has not come yet (the answer waits for it)."""
        record_id = self._records.pop(answer.mirror_id, None)
        if record_id is None:
            self._remember(self._answers, answer.mirror_id, answer)
            return None
        return record_id, self.fields(answer)

    def fields(self, answer: MirrorAnswer) -> dict[str, Any]:
        """The record's fields for the cluster's answer, redacted as the laptop's was."""
        s = self.settings
        try:
            body = base64.b64decode(answer.body_b64, validate=True)
        except (binascii.Error, ValueError):
            body = b""
        headers = redact_header_names(answer.headers, s.redact_headers)
        body = redact_body(body[:s.max_body_bytes], headers, s.redact_json_paths,
                           cut=answer.truncated or len(body) > s.max_body_bytes)
        cluster = Message(headers=headers, body=body, size=answer.size,
                          truncated=answer.truncated or answer.size > len(body))
        return {"cluster": cluster, "cluster_status": answer.status,
                "cluster_note": answer.note if not answer.status else ""}

    def _remember(self, table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        while len(table) > self.pending:
            table.popitem(last=False)
