"""bridged.errors: exit codes, stable codes, one-line messages with hints, rebuilding by code."""

import pytest

from bridged import errors
from bridged.errors import (
    BY_CODE,
    BridgedError,
    CarrierError,
    ConfigError,
    Conflict,
    ControlError,
    HostKeyMismatch,
    KubeError,
    NotFound,
    ProtocolError,
    RefusedError,
    SessionError,
    from_code,
)

# (class, exit_code, code): the codes are stable for --json output and the control API
ERRORS = [
    (BridgedError, 1, "error"),
    (ConfigError, 2, "bad-input"),
    (CarrierError, 1, "carrier"),
    (SessionError, 1, "session"),
    (HostKeyMismatch, 1, "host-key-changed"),
    (RefusedError, 1, "refused"),
    (NotFound, 1, "not-found"),
    (Conflict, 1, "conflict"),
    (KubeError, 1, "kube"),
    (ControlError, 1, "control"),
    (ProtocolError, 1, "protocol"),
]


@pytest.mark.parametrize(("cls", "exit_code", "code"), ERRORS, ids=[c[0].__name__ for c in ERRORS])
def test_class_carries_exit_code_and_code(cls, exit_code, code):
    error = cls("boom")
    assert (error.exit_code, error.code) == (exit_code, code)


@pytest.mark.parametrize("cls", [c[0] for c in ERRORS])
def test_every_error_is_a_bridged_error(cls):
    assert issubclass(cls, BridgedError)
    assert issubclass(cls, Exception)


def test_host_key_mismatch_is_a_session_error():
    assert isinstance(HostKeyMismatch("x"), SessionError)


@pytest.mark.parametrize(
    ("message", "hint", "text"),
    [
        ("relay unreachable", None, "relay unreachable"),
        ("relay unreachable", "", "relay unreachable"),
        ("relay unreachable", "is the relay running?", "relay unreachable (is the relay running?)"),
    ],
)
@pytest.mark.parametrize("cls", [c[0] for c in ERRORS])
def test_str_is_message_with_hint_in_parentheses(cls, message, hint, text):
    error = cls(message, hint=hint)
    assert str(error) == text
    assert error.message == message
    assert error.hint == hint


def test_hint_is_keyword_only():
    with pytest.raises(TypeError):
        ConfigError("message", "hint")  # type: ignore[misc]


def test_codes_are_unique_and_all_listed():
    assert len(BY_CODE) == len(ERRORS)
    assert {code: cls for cls, _, code in ERRORS} == BY_CODE


def test_every_bridged_error_subclass_in_module_is_in_by_code():
    defined = {
        obj for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, BridgedError)
    }
    assert defined == set(BY_CODE.values())


@pytest.mark.parametrize(("cls", "code"), [(c[0], c[2]) for c in ERRORS])
def test_from_code_rebuilds_the_same_class(cls, code):
    error = from_code(code, "it failed", "try again")
    assert type(error) is cls
    assert (error.message, error.hint) == ("it failed", "try again")
    assert str(error) == "it failed (try again)"


@pytest.mark.parametrize("code", ["", "unknown", "Bad-Input", "unsupported"])
def test_from_code_with_unknown_code_gives_base_error(code):
    error = from_code(code, "m")
    assert type(error) is BridgedError
    assert (error.message, error.hint, error.exit_code) == ("m", None, 1)
