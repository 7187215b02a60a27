"""The input rules themselves (celery_durable.validation): what the messages say, and that they match the schema."""

from __future__ import annotations

import pytest

from celery_durable import InvalidArgument, validation
from celery_durable.store.schema import MAX_ID_LENGTH


def test_the_name_limit_is_the_column_size() -> None:
    assert validation.MAX_NAME_LENGTH == MAX_ID_LENGTH


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: validation.check_id("a\x00b"), r"workflow id must not contain NUL characters, got 'a\\x00b'"),
        (lambda: validation.check_topic("\ud800"), r"topic must be valid Unicode text .*got '\\ud800'"),
        (lambda: validation.check_id("x" * 10_000), r"1 to 255 characters long, got 10000: 'xxx.*\(10002 characters\)"),
        (lambda: validation.check_timeout(2**1024), r"timeout must be a number of seconds from 0 to 315360000"),
        (lambda: validation.check_timeout("5"), r"got '5' of type str"),
        (lambda: validation.check_timeout(float("nan")), r"got nan"),
        (lambda: validation.check_limit(2**63), r"limit must be a whole number from 1 to 2147483647"),
        (lambda: validation.check_name_filter(0), r"name must be a string, got 0 of type int"),
        (lambda: validation.check_status("waiting"), r"unknown status 'waiting'; use one of PENDING"),
        (lambda: validation.check_call((), {1: 2}), r"keyword argument names must be strings, got 1"),
    ],
)
def test_refusals_name_the_argument_and_show_the_value(call, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument, match=message):
        call()


def test_a_str_subclass_is_checked_and_returned_as_a_plain_str() -> None:
    class Sneaky(str):
        def __len__(self) -> int:
            return 1

    value = validation.check_id(Sneaky("x" * 300)[:255])
    assert type(value) is str
    with pytest.raises(InvalidArgument):
        validation.check_id(Sneaky("x" * 300))


def test_valid_values_come_back_in_their_stored_form() -> None:
    assert validation.check_topic(None) == ""
    assert validation.check_timeout(-0.0) == 0.0 and validation.check_timeout(None) is None
    assert validation.check_timeout(3) == 3.0 and isinstance(validation.check_timeout(3), float)
    assert validation.check_id("😀 e\u0301 '; DROP TABLE x; --") == "😀 e\u0301 '; DROP TABLE x; --"
