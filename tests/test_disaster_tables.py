"""How DisasterDetector's windows travel in its table: listed when the row is written, as they were when saved."""

from __future__ import annotations

import json

from faust.utils import json as faust_json

from streams.disaster_rules import SensorWindow
from streams.tables.disaster import WindowRow, window_from

T0 = 1_700_000_000.0
HISTORY_S = 4.0


def grown(window: SensorWindow, count: int, start: float) -> SensorWindow:
    for i in range(count):
        added = window.add(start + i / 10, 50.0 + i / 10, HISTORY_S)
        assert added is not None
        window = added
    return window


def test_a_saved_window_is_written_as_it_was_when_saved_whatever_came_after() -> None:
    """The row is listed at the commit, after later readings grew the same sample list: it still holds
    exactly the saved window's samples, in the JSON form the table always had, and reads back equal."""
    saved = grown(SensorWindow("water.0"), 60, T0)  # 6 s of samples: the oldest dropped
    row = WindowRow(saved)
    later = grown(saved, 25, T0 + 6.0)  # appended to the list the saved window's view shares
    assert later.newest == T0 + 6.0 + 2.4 and saved.newest == T0 + 5.9

    written = json.loads(faust_json.dumps({"d": row}))["d"]

    assert written == {"sensor": "water.0", "samples": [[t, v] for t, v in saved.samples]}
    assert len(written["samples"]) == 41 and written["samples"][-1][0] == T0 + 5.9, "4 s of samples, then the saved ones only"
    assert window_from(written) == saved
    assert window_from(row) is saved, "a run not committed yet reads the window it saved"
