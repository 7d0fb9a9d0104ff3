"""Region bounds: whether a region handle's elements all lie inside the array, in exact integers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_memory_array._layout import Region

INTP_MAX = 2**63 - 1
STRIDES = st.one_of(st.integers(-64, 64), st.integers(-(2**65), 2**65))


@st.composite
def regions(draw: st.DrawFn) -> Region:
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=3)))
    strides = tuple(draw(st.lists(STRIDES, min_size=len(shape), max_size=len(shape))))
    offset = draw(st.one_of(st.integers(-64, 256), st.integers(-(2**65), 2**65)))
    return Region(offset, shape, strides)


def every_element_inside(region: Region, nbytes: int, itemsize: int) -> bool:
    """The definition, element by element."""
    if any(not -INTP_MAX - 1 <= value <= INTP_MAX for value in (region.offset, *region.strides)):
        return False
    if 0 in region.shape:
        return 0 <= region.offset <= nbytes
    for index in itertools.product(*(range(dim) for dim in region.shape)):
        start = region.offset + sum(i * stride for i, stride in zip(index, region.strides))
        if start < 0 or start + itemsize > nbytes:
            return False
    return True


@given(regions(), st.integers(0, 256), st.integers(1, 16))
def test_a_region_fits_exactly_when_every_element_lies_inside(region, nbytes, itemsize):
    assert region.fits(nbytes, itemsize) == every_element_inside(region, nbytes, itemsize)


def test_strides_that_overflow_numpys_extent_check_do_not_fit():
    # NumPy computes the extent in intp: 4 * 2**62 wraps to 0, so it accepts this.
    assert not Region(0, (5,), (2**62,)).fits(40, 8)
    assert not Region(0, (5,), (-(2**62),)).fits(40, 8)
    assert not Region(0, (2, 2), (2**62, 2**62)).fits(40, 8)


@pytest.mark.parametrize(
    "region",
    [
        Region(2**63, (1,), (8,)),
        Region(0, (1,), (2**63,)),
        Region(0, (2**63,), (0,)),
        Region(0, (-1,), (8,)),
        Region(0, (2, 2), (8,)),
        # a tampered pickle can hold anything
        Region(0.0, (1,), (8,)),
        Region(0, (1,), ("8",)),
        Region(0, None, ()),
    ],
    ids=repr,
)
def test_regions_no_array_can_have_do_not_fit(region):
    assert not region.fits(2**70, 8)


def test_an_empty_region_fits_anywhere_from_the_start_to_the_end():
    assert Region(40, (0, 3), (8, 16)).fits(40, 8)
    assert Region(0, (0,), (2**62,)).fits(0, 8)
    assert not Region(41, (0,), (8,)).fits(40, 8)
    assert not Region(-1, (0,), (8,)).fits(40, 8)


def test_negative_strides_reach_back_from_the_offset():
    assert Region(32, (5,), (-8,)).fits(40, 8)
    assert not Region(24, (5,), (-8,)).fits(40, 8)
    assert Region(0, (), ()).fits(8, 8)
    assert not Region(1, (), ()).fits(8, 8)
