"""`heater heat --target C`: one heating cycle on the local platform, through the controller.

The controller refuses while the FATAL latch is set or a job runs, launches the job as
a child process with this platform's settings, and reports its outcome; the command
exits with the job's code (0 done, 1 failed, 3 FATAL).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from heater.rundir import Layout
from streams import kafka_clients
from streams.heating.controller import HeatingController, HeatingRefused, announce_ends
from streams.heating.launch import LocalLauncher
from streams.platform_watch import PlatformWatch

JOB = "heating-job"


async def heat(run_dir: Path, target_c: float) -> int:
    layout = Layout.load(run_dir)
    watch = PlatformWatch(layout.broker_bootstrap, "heat-cli")
    await watch.start()
    watch.run_in_background()
    producer = kafka_clients.producer(layout.broker_bootstrap, request_timeout_ms=10_000)
    await producer.start()
    try:
        launcher = LocalLauncher(env=layout.service_env(JOB), log_dir=layout.logs)
        controller = HeatingController(launcher, watch)
        controller.on_end.append(announce_ends(lambda topic, key, value: producer.send_and_wait(topic, value, key)))
        try:
            run = await controller.request_heating(target_c)
        except HeatingRefused as refused:
            print(f"heating refused: {refused.reason}")
            return 2 if refused.status == 400 else 1
        print(f"heating job {run.job_id} started: target {run.target_c:.1f} °C (log: {launcher.log_path(run.job_id)})", flush=True)
        ended = await controller.wait(run.job_id)
        print(f"heating job {ended.job_id} {ended.outcome} (exit {ended.exit_code}): {ended.detail}")
        return ended.exit_code if ended.exit_code is not None else 1
    finally:
        await producer.stop()
        await watch.stop()


def main(run_dir: Path, target_c: float) -> int:
    return asyncio.run(heat(run_dir, target_c))
