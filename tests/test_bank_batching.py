"""BankManager decides readings in batches: the alarms stay exactly the pure rules', at any rate.

The bank takes what arrived within a few milliseconds as one batch (one ledger step, one
state write). The same toggling input — WARNING crossed up and down with noise inside
the hysteresis band and implausible spikes — is sent first at a low rate (about 300
readings/s, batches of one or a few), then all at once (batches of hundreds): AlarmsServer's
history must equal what :class:`streams.bank_rules.Bank` decides reading by reading, and
the bank must really have batched the burst.
"""

from __future__ import annotations

import time
from pathlib import Path

from heater.runtime.broker import EmbeddedBroker
from heater.runtime.vault import EmbeddedVault
from streams.bank_rules import Bank, BankConfig
from streams.heater_config import HeaterLimits
from streams.records import SensorReading
from tests.support import Occurrences, ServiceProcess, metric, metric_sum, produce, run, wait_for, wait_for_history
from tests.test_bank_manager import NO_STALENESS, dedicated, history, processed_through, toggling_input  # noqa: F401
from tests.test_bank_rules import history_of

LOW_RATE_PER_S = 300.0


def send_paced(broker: EmbeddedBroker, readings: list[SensorReading], rate: float) -> None:
    """Send in chunks of 6 readings, paced to ``rate`` readings/s."""
    async def paced() -> None:
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await producer.start()
        try:
            started = time.monotonic()
            for i in range(0, len(readings), 6):
                for r in readings[i : i + 6]:
                    await producer.send("sensorData", r.dumps())
                await producer.flush()
                delay = started + (i + 6) / rate - time.monotonic()
                if delay > 0:
                    import asyncio

                    await asyncio.sleep(delay)
        finally:
            await producer.stop()

    run(paced())


def test_alarms_are_exact_at_a_low_rate_and_in_a_burst(dedicated: tuple[EmbeddedBroker, ServiceProcess],  # noqa: F811
                                                        tmp_path: Path, vault: EmbeddedVault) -> None:
    broker, alarms = dedicated
    t0 = time.time() - 3600
    slow = toggling_input(cycles=40, seed=5, t0=t0)
    burst = toggling_input(cycles=60, seed=6, t0=slow[-1].received_at + 1.0)
    readings = slow + burst
    config = BankConfig(limits=HeaterLimits(stale_after_s=float(NO_STALENESS["HEATER_LIMIT_STALE_AFTER_S"])))
    effects = Bank(config).feed(readings)
    assert len(effects) >= 300

    bank = ServiceProcess("bank", broker.url, tmp_path / "bank", NO_STALENESS, vault=vault).start()
    try:
        bank.wait_ready(timeout=60)

        def got() -> Occurrences:
            return {a["occurrence_id"]: (a["active"], a["cleared_at"]) for a in history(alarms)}

        send_paced(broker, slow, LOW_RATE_PER_S)
        wait_for(lambda: processed_through(bank) >= slow[-1].received_at, timeout=60, interval=0.2, what="slow part decided")
        wait_for_history(got, history_of(Bank(config).feed(slow)), 30, "history after the low-rate part", lambda key: "")
        batches_slow = metric(bank, "heater_batches_total", service="bank", topic="sensorData")

        run(produce(broker.bootstrap, "sensorData", [r.dumps() for r in burst]))
        wait_for(lambda: processed_through(bank) >= burst[-1].received_at, timeout=90, interval=0.2, what="burst decided")
        wait_for_history(got, history_of(effects), 45, "history equals the pure rules", lambda key: "")
        wait_for(lambda: bank.get("/bank")[1]["pending"] == [], timeout=10, what="outbox settled")

        batches = metric(bank, "heater_batches_total", service="bank", topic="sensorData")
        records = metric(bank, "heater_messages_processed_total", service="bank", topic="sensorData")
        assert records == len(readings)
        assert batches - batches_slow < len(burst) / 2, "the burst was decided in batches"
        assert metric_sum(bank.probe_url, "heater_bank_duplicates_total") == 0
    finally:
        bank.stop()
