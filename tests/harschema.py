"""The fields HAR 1.2 requires (http://www.softwareishard.com/blog/har-12-spec/), as a JSON
schema: what the HAR export and the inspector's download are checked against."""

from __future__ import annotations

import json
from typing import Any

import jsonschema

_PAIRS = {"type": "array", "items": {
    "type": "object", "required": ["name", "value"],
    "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}}
_CONTENT = {"type": "object", "required": ["size", "mimeType"], "properties": {
    "size": {"type": "integer"}, "mimeType": {"type": "string"}, "text": {"type": "string"},
    "encoding": {"type": "string"}}}
_TIMING = {"type": "number", "minimum": -1}

HAR_1_2: dict[str, Any] = {
    "type": "object", "required": ["log"],
    "properties": {"log": {
        "type": "object", "required": ["version", "creator", "entries"],
        "properties": {
            "version": {"const": "1.2"},
            "creator": {"type": "object", "required": ["name", "version"],
                        "properties": {"name": {"type": "string"},
                                       "version": {"type": "string"}}},
            "entries": {"type": "array", "items": {
                "type": "object",
                "required": ["startedDateTime", "time", "request", "response", "cache",
                             "timings"],
                "properties": {
                    "startedDateTime": {
                        "type": "string",
                        "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$"},
                    "time": {"type": "number", "minimum": 0},
                    "request": {
                        "type": "object",
                        "required": ["method", "url", "httpVersion", "cookies", "headers",
                                     "queryString", "headersSize", "bodySize"],
                        "properties": {
                            "method": {"type": "string"},
                            "url": {"type": "string", "pattern": "^https?://"},
                            "httpVersion": {"type": "string"}, "cookies": {"type": "array"},
                            "headers": _PAIRS, "queryString": _PAIRS,
                            "headersSize": {"type": "integer"}, "bodySize": {"type": "integer"},
                            "postData": {"type": "object", "required": ["mimeType", "text"],
                                         "properties": {"params": _PAIRS}}}},
                    "response": {
                        "type": "object",
                        "required": ["status", "statusText", "httpVersion", "cookies",
                                     "headers", "content", "redirectURL", "headersSize",
                                     "bodySize"],
                        "properties": {
                            "status": {"type": "integer"}, "statusText": {"type": "string"},
                            "httpVersion": {"type": "string"}, "cookies": {"type": "array"},
                            "headers": _PAIRS, "content": _CONTENT,
                            "redirectURL": {"type": "string"},
                            "headersSize": {"type": "integer"},
                            "bodySize": {"type": "integer"}}},
                    "cache": {"type": "object"},
                    "timings": {"type": "object", "required": ["send", "wait", "receive"],
                                "properties": {k: _TIMING for k in (
                                    "blocked", "dns", "connect", "send", "wait", "receive",
                                    "ssl")}},
                },
                # custom fields must start with an underscore
                "propertyNames": {"anyOf": [{"enum": [
                    "pageref", "startedDateTime", "time", "request", "response", "cache",
                    "timings", "serverIPAddress", "connection", "comment"]},
                    {"pattern": "^_"}]},
            }},
        }}},
}


def validate_har(har: Any) -> None:
    """Raises jsonschema.ValidationError unless ``har`` (as a file would hold it) is HAR 1.2."""
    jsonschema.validate(json.loads(json.dumps(har)), HAR_1_2)
