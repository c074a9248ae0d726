"""Stop strings over streamed pieces that do not line up with them (pure text, no model)."""

import pytest

from models.decoding.stop_strings import StopStringMatcher

pytestmark = pytest.mark.unit


def _run(pieces: list[str], stop: tuple[str, ...]) -> tuple[list[str], bool]:
    matcher = StopStringMatcher(stop)
    released, stopped = [], False
    for piece in pieces:
        result = matcher.feed(piece)
        released.append(result.text)
        if result.stopped:
            stopped = True
            break
    if not stopped:
        released.append(matcher.flush())
    return released, stopped


def test_a_stop_string_split_over_two_pieces_ends_the_text_just_before_it():
    released, stopped = _run(["Hello\n", "\nWorld"], ("\n\n",))

    assert stopped
    assert "".join(released) == "Hello"
    assert released[0] == "Hello"  # the newline was held back: it might have begun the stop string


def test_text_that_only_looked_like_a_stop_string_is_released_once_it_cannot_be_one():
    released, stopped = _run(["ab", "cx", "yz"], ("abcd",))

    assert not stopped
    assert "".join(released) == "abcxyz"
    assert released == ["", "abcx", "yz", ""]  # "ab" could still become "abcd"; "abcx" cannot


def test_the_earliest_of_several_stop_strings_wins():
    released, stopped = _run(["one END two STOP"], ("STOP", "END"))

    assert stopped and "".join(released) == "one "


def test_held_back_text_comes_out_at_the_end_of_the_answer():
    released, stopped = _run(["the end is nea"], ("near",))

    assert not stopped
    assert released == ["the end is ", "nea"]
