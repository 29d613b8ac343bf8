"""The tank model's gas train, including the faults the relay board cannot see."""

from __future__ import annotations

from simulator.physics import HeaterModel


def lit(model: HeaterModel) -> HeaterModel:
    for _ in range(5):
        model.step(0.1, power=True, valve_open=True, spark=True)
    assert model.flame
    return model


def test_closing_the_valve_puts_the_flame_out() -> None:
    model = lit(HeaterModel())
    model.step(0.1, power=True, valve_open=False, spark=False)
    assert not model.flame


def test_a_leaking_valve_keeps_a_lit_burner_burning_until_the_power_is_cut() -> None:
    model = lit(HeaterModel(valve_leaks=True))
    before = model.temperature_c
    for _ in range(20):
        model.step(0.1, power=True, valve_open=False, spark=False)
    assert model.flame and model.temperature_c > before + 3
    model.step(0.1, power=False, valve_open=False, spark=False)
    assert not model.flame


def test_a_leaking_valve_does_not_light_a_cold_burner() -> None:
    model = HeaterModel(valve_leaks=True)
    model.step(1.0, power=True, valve_open=False, spark=True)
    assert not model.flame
