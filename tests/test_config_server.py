"""ConfigurationServer refuses to start without a valid bootstrap configuration, saying what is missing.

On the session broker nothing may be published here (every service of the session follows
``config``): the server is started only where it must fail before publishing. Its live
behaviour — hot reload, refusals, history — is shown on a whole platform in
``test_fault_injection.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from heater.runtime.broker import EmbeddedBroker
from streams import exitcodes
from tests.support import ServiceProcess

pytestmark = pytest.mark.timeout(90)


def failed_start(broker: EmbeddedBroker, run_dir: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = ServiceProcess("config", broker.url, run_dir, env).start()
    try:
        code = proc.wait(60)
    finally:
        proc.stop()
    return code, proc.log_path.read_text()


@pytest.mark.parametrize(("setup", "says"), [
    (lambda d: {}, "no bootstrap configuration: HEATER_CONFIG_FILE is not set"),
    (lambda d: {"HEATER_CONFIG_FILE": str(d / "absent.json")}, "absent.json does not exist"),
    (lambda d: (d / "bad.json").write_text('{"limits": {"warning_c": 99}}') and {"HEATER_CONFIG_FILE": str(d / "bad.json")},
     "bad.json: expected warning_c < critical_c"),
    (lambda d: (d / "torn.json").write_text('{"limits": ') and {"HEATER_CONFIG_FILE": str(d / "torn.json")},
     "torn.json is not JSON: line 1"),
], ids=["unset", "missing", "invalid", "not-json"])
def test_no_valid_bootstrap_no_start(broker: EmbeddedBroker, run_dir: Path, setup, says: str) -> None:  # type: ignore[no-untyped-def]
    env = setup(run_dir)
    code, log = failed_start(broker, run_dir, env)
    assert code not in (exitcodes.DONE, exitcodes.STAY_DOWN), log[-2000:]
    assert says in log, log[-2000:]
