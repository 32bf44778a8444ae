"""Scheme strings: every valid form parses, every invalid one is refused with a clear error."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilfs.scheme import InvalidScheme, Scheme


@pytest.mark.parametrize("text, kind, k, m, width", [
    ("mirror:2", "mirror", 1, 1, 2),
    ("mirror:3", "mirror", 1, 2, 3),
    ("parity:4+1", "parity", 4, 1, 5),
    ("ec:4+2", "ec", 4, 2, 6),
    ("ec:8+3", "ec", 8, 3, 11),
    (" ec:1+1 ", "ec", 1, 1, 2),
])
def test_valid_schemes_parse(text, kind, k, m, width):
    scheme = Scheme.parse(text)
    assert (scheme.kind, scheme.data_chunks, scheme.coding_chunks) == (kind, k, m)
    assert scheme.width == width
    assert scheme.tolerance == m
    assert Scheme.parse(str(scheme)) == scheme


@pytest.mark.parametrize("text", [
    "", "mirror", "mirror:1", "mirror:0", "mirror:2+1", "parity:4+2", "parity:0+1",
    "ec:0+2", "ec:4+0", "ec:200+56", "raid5", "ec:4+-1", "ec:4+2 extra", "EC:4+2", None, 42,
])
def test_invalid_schemes_refused(text):
    with pytest.raises(InvalidScheme) as info:
        Scheme.parse(text)
    assert str(info.value)


@given(st.text(max_size=20))
def test_random_text_never_crashes(text):
    try:
        scheme = Scheme.parse(text)
    except InvalidScheme:
        return
    assert Scheme.parse(str(scheme)) == scheme


def test_direct_construction_checks_shape():
    with pytest.raises(InvalidScheme):
        Scheme("ec", 0, 1)
    with pytest.raises(InvalidScheme):
        Scheme("ec", 4, -1)
    with pytest.raises(InvalidScheme):
        Scheme("ec", 250, 6)
    with pytest.raises(InvalidScheme):
        Scheme("raid", 1, 1)
