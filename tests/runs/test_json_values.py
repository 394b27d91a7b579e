"""runs.json_values.loads decides from the text whether a parsed value needs walking: these are the
texts where that shortcut could go wrong, each answered as the full check answers it."""

import json

import pytest

from runs import json_values


@pytest.mark.parametrize(
    "text",
    [
        r'"\u0000"',
        r'{"a": ["x\u0000y"]}',
        r'"\ud800"',
        r'"\uDFFF"',
        r'{"\udc00": 1}',
        "1e309",
        "[-1e400]",
        '{"a": NaN}',
        "[" * 65 + "]" * 65,
        '{"a":' * 65 + "1" + "}" * 65,
    ],
)
def test_values_the_stores_cannot_hold_are_refused(text):
    with pytest.raises(json_values.UnsafeJSON):
        json_values.loads(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (r'"\\u0000"', "\\u0000"),  # an escaped backslash, then the letters: six characters of text
        (r'"\ud83d\ude00"', "\U0001f600"),  # a surrogate pair is one character
        ("[" * 64 + "]" * 64, json.loads("[" * 64 + "]" * 64)),  # the deepest allowed
        ('{"price": 19.99, "big": 1e308}', {"price": 19.99, "big": 1e308}),
    ],
)
def test_values_the_stores_can_hold_come_back_unchanged(text, value):
    assert json_values.loads(text) == value


def test_text_already_holding_a_lone_surrogate_is_refused():
    """A str (not bytes) can carry a surrogate without any escape: the text check sees it too."""
    with pytest.raises(json_values.UnsafeJSON):
        json_values.loads('{"a": "\ud800"}')
