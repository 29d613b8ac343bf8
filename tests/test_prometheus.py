"""Metrics against Prometheus' conventions, the generated scrape configuration, and the Grafana
dashboard against the code: a panel cannot query a metric no service exports."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric

from adapters.can.metrics import CanStats, StatsCollector
from heater import prometheus
from heater.catalogue import COMPONENTS
from heater.rundir import Layout, probe_port_name
from tests.prometheus_server import PrometheusUnavailable, check_config, ensure_installed

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "heater.json"
#: Every module that declares metrics (the scan below fails when one is missing here).
METRIC_MODULES = (
    "streams.metrics",
    "streams.consistency",
    "streams.resilience",
    "streams.exception_reports",
    "streams.agents.alarms",
    "streams.agents.bank",
    "streams.agents.config",
    "streams.agents.disaster",
    "streams.agents.exceptions",
    "streams.agents.registry",
    "adapters.can.metrics",
    "adapters.i2c.metrics",
    "homekit.metrics",
    "streams.secrets_rotator",
)
DECLARATION = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary)\(\s*\"heater_|MetricFamily\(")
#: Series Prometheus adds itself.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def heater_families() -> Iterator[Metric]:
    """Every metric family the services declare: the registered ones and the CAN adapter's collector."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    families = list(REGISTRY.collect()) + list(StatsCollector(CanStats()).collect())
    return (f for f in families if not f.name.startswith(("process_", "python_")))


def exported_names() -> set[str]:
    """The names of the series the services export (``_total``, ``_bucket``... included)."""
    return {f.name + suffix for f in heater_families() for suffix in SUFFIXES[f.type]}


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_every_module_that_declares_metrics_is_checked() -> None:
    declaring = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in ("streams", "adapters", "homekit", "heater", "simulator")
        for path in (ROOT / package).rglob("*.py")
        if DECLARATION.search(path.read_text())
    }
    assert declaring <= set(METRIC_MODULES)


def test_metric_names_follow_prometheus_conventions() -> None:
    for family in heater_families():
        assert re.fullmatch(r"heater_[a-z0-9]+(_[a-z0-9]+)*", family.name), family.name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|kb|mb|percent)(_|$)", family.name), f"{family.name}: not a base unit"
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), f"{family.name}: a histogram names its base unit"
        if family.type == "gauge":
            assert not family.name.endswith("_total"), f"{family.name}: _total is for counters"
        assert family.documentation, f"{family.name} has no help text"


def test_every_series_the_dashboard_queries_is_exported() -> None:
    exported = exported_names()
    queried = {name for expr in dashboard_exprs() for name in re.findall(r"\b[a-z_][a-z0-9_]*(?=\s*[{\[)])", expr)
               if name.startswith("heater_") or name in PROMETHEUS_OWN}
    assert queried, "the dashboard queries nothing"
    assert queried - PROMETHEUS_OWN <= exported, f"not exported by any service: {sorted(queried - PROMETHEUS_OWN - exported)}"


def test_the_dashboard_shows_what_the_operator_needs() -> None:
    text = " ".join(dashboard_exprs())
    for name in ("heater_platform_latched", "heater_i2c_trip_latched", "heater_i2c_outputs", "heater_alarms_active",
                 "heater_messages_processed_total", "heater_messages_sent_total", "heater_processing_seconds_bucket",
                 "heater_consumer_lag", "heater_messages_rejected_total", "heater_table_keys"):
        assert name in text, f"no panel shows {name}"


def test_the_scrape_config_targets_every_service_on_loopback(tmp_path: Path) -> None:
    layout = Layout.allocate(tmp_path)
    document = yaml.safe_load(prometheus.render(layout))
    [job] = document["scrape_configs"]
    assert job["honor_labels"] is True
    targets = {g["labels"]["service"]: g["targets"] for g in job["static_configs"]}
    assert targets == {c.name: [f"127.0.0.1:{layout.ports[probe_port_name(c.name)]}"] for c in COMPONENTS if c.has_web}


def test_promtool_accepts_the_generated_config(tmp_path: Path) -> None:
    try:
        ensure_installed()
    except PrometheusUnavailable as exc:
        pytest.fail(str(exc))
    layout = Layout.allocate(tmp_path)
    layout.run_dir.mkdir(parents=True, exist_ok=True)
    prometheus.write(layout)
    result = check_config(layout.prometheus_config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_scrapes_give_the_labels_the_dashboard_reads() -> None:
    """The ServiceMonitor: job="heater" on every series, and the metrics' own ``service`` label kept."""
    monitor = yaml.safe_load((ROOT / "deploy" / "base" / "monitoring" / "service-monitor.yaml").read_text())
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/part-of"
    assert all(endpoint["honorLabels"] is True and endpoint["path"] == "/metrics" for endpoint in monitor["spec"]["endpoints"])
    assert 'job="heater"' in " ".join(dashboard_exprs())
