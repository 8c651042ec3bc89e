"""What the traffic log may show of a request's headers."""

from __future__ import annotations

import pytest

from bridged.routing.redact import MAX_HEADERS, MAX_VALUE, REDACTED, redact


@pytest.mark.parametrize(
    ("headers", "extra", "expected"),
    [
        ([("Authorization", "Bearer abc"), ("x-dev", "alice")], (),
         [("Authorization", REDACTED), ("x-dev", "alice")]),
        ([("COOKIE", "s=1"), ("set-cookie", "t=2"), ("Proxy-Authorization", "Basic x")], (),
         [("COOKIE", REDACTED), ("set-cookie", REDACTED), ("Proxy-Authorization", REDACTED)]),
        ([("x-api-key", "k"), ("X-Auth-Token", "t"), ("x-csrf-token", "c")], (),
         [("x-api-key", REDACTED), ("X-Auth-Token", REDACTED), ("x-csrf-token", REDACTED)]),
        ([("X-Team-Secret", "s"), ("x-dev", "bob")], ("x-team-secret",),
         [("X-Team-Secret", REDACTED), ("x-dev", "bob")]),
        ([("x-dev", "bob")], ("X-DEV",), [("x-dev", REDACTED)]),
        ([("authorization-hint", "none")], (), [("authorization-hint", "none")]),
        ([], ("x",), []),
    ],
)
def test_secret_headers_are_redacted(headers, extra, expected):
    assert redact(headers, extra) == expected


def test_long_values_and_many_headers_are_cut():
    long = [("x-long", "v" * (MAX_VALUE + 10))]
    assert redact(long) == [("x-long", "v" * MAX_VALUE + "…")]
    many = [(f"x-{i}", "1") for i in range(MAX_HEADERS + 5)]
    assert len(redact(many)) == MAX_HEADERS
