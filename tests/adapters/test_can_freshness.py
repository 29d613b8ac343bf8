"""What the gas valve's lease learns of the sensors: the newest valid temperature and flame readings."""

from __future__ import annotations

from adapters.can.freshness import FreshnessTracker
from adapters.can.frames import STATUS_SENSOR_FAULT, DecodedFrame, FrameKind


def water(sensor: int = 0, status: int = 0) -> DecodedFrame:
    return DecodedFrame(FrameKind.WATER_TEMP, 0x100 + sensor, 1, sensor=sensor, value=40.0, status=status)


def flame(present: bool, status: int = 0) -> DecodedFrame:
    return DecodedFrame(FrameKind.BURNER_STATUS, 0x200, 1, flame=present, status=status)


def test_nothing_to_tell_before_the_first_valid_reading() -> None:
    tracker = FreshnessTracker()
    assert tracker.news(5.0) is None
    tracker.on_frame(water(status=STATUS_SENSOR_FAULT), 4.0)
    assert tracker.news(5.0) is None, "a sensor that flags its own reading faulty keeps no valve open"


def test_the_newest_temperature_and_flame_are_told_once() -> None:
    tracker = FreshnessTracker()
    tracker.on_frame(water(0), 1.0)
    tracker.on_frame(water(1), 1.2)
    tracker.on_frame(flame(True), 1.1)
    told = tracker.news(1.3)
    assert told is not None
    assert (told.temperature_at, told.flame, told.flame_at, told.sent_at) == (1.2, True, 1.1, 1.3)
    assert tracker.news(1.4) is None, "nothing new: nothing sent"
    tracker.on_frame(water(2, status=STATUS_SENSOR_FAULT), 1.5)
    assert tracker.news(1.6) is None, "a faulty reading is no news"


def test_a_lost_flame_is_told_and_an_older_frame_does_not_undo_it() -> None:
    tracker = FreshnessTracker()
    tracker.on_frame(flame(True), 1.0)
    tracker.news(1.0)
    tracker.on_frame(flame(False), 2.0)
    tracker.on_frame(flame(True), 1.5)  # received earlier, handled later
    told = tracker.news(2.1)
    assert told is not None and (told.flame, told.flame_at) == (False, 2.0)


def test_what_may_not_have_reached_the_broker_is_told_again() -> None:
    tracker = FreshnessTracker()
    tracker.on_frame(water(0), 1.0)
    assert tracker.news(1.0) is not None
    tracker.retell()
    again = tracker.news(1.1)
    assert again is not None and again.temperature_at == 1.0
