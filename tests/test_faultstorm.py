"""The small fixed-seed form of tools/faultstorm: one damaged region per trial (bit flips in a
1 MiB window, random bytes, or zeros from 512 bytes to 1 MiB) never returns a wrong byte and
never loses a pool; on a mirror and under copies=2 the scrub finds and repairs every damaged
copy and a second scrub is clean."""
from __future__ import annotations

import pytest

from fusezfs.testing import faultsim


@pytest.mark.parametrize("layout", faultsim.LAYOUTS)
def test_one_damaged_region_loses_nothing_it_had_two_copies_of(layout):
    tally = faultsim.storm(layout, 12, seed=3)
    assert tally.trials == 12
    assert tally.wrong == 0 and tally.lost == 0, tally.notes
    if layout != "file":
        assert tally.found > 0, "no trial damaged anything: the test proves nothing"
        assert tally.unreadable == 0, tally.notes
        assert tally.repaired == tally.found
        assert tally.clean == tally.trials, tally.notes
