"""The shipped Prometheus config, alert rules and Grafana dashboard against a real Prometheus scraping
a real coordinator."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from coop.server.leader import Leadership
from coop.server.loops import SchedulerLoop
from tests.api.helpers import node
from tests.conftest import Coordinator, wait_for
from tests.observability.conftest import METRICS_TOKEN
from tests.observability.cooperative import Heartbeats, populate, telemetry
from tests.observability.extras import add_cpu_node, add_pools
from tests.observability.prometheus import (
    DASHBOARD,
    DEPLOY,
    INTERVAL_S,
    JOB,
    PROMETHEUS_DIR,
    Prometheus,
    materialise,
    promtool,
    require_prometheus,
    running_prometheus,
)

ALERTS = [
    "CoopCoordinatorDown",
    "CoopNodeDown",
    "CoopJobStuckPending",
    "CoopSchedulerCycleSlow",
    "CoopGpuHot",
    "CoopPoolDown",
    "CoopForeignRayWork",
]


def test_promtool_accepts_the_config_and_rules_and_their_unit_tests_pass(tmp_path: Path) -> None:
    require_prometheus()
    shipped = promtool("check", "config", "--syntax-only", PROMETHEUS_DIR / "prometheus.yml")
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    # in full (token file and rule files included), as installed next to its token file
    full = promtool("check", "config", materialise(tmp_path, "127.0.0.1:8470", "secret"))
    assert full.returncode == 0, full.stdout + full.stderr
    rules = promtool("check", "rules", PROMETHEUS_DIR / "alerts.yml")
    assert rules.returncode == 0 and f"{len(ALERTS)} rules found" in rules.stdout, rules.stdout + rules.stderr
    tests = promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert tests.returncode == 0, tests.stdout + tests.stderr

    shipped_alerts = [r["alert"] for g in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
                      for r in g["rules"]]  # fmt: skip
    assert shipped_alerts == ALERTS
    cases = [c for t in yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
             for c in t["alert_rule_test"]]  # fmt: skip
    for alert in ALERTS:
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in cases), f"no test where {alert} fires"
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in cases), f"no test where {alert} holds"


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, rows included."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            out += [(p["title"], t["expr"]) for t in p.get("targets", [])]
    return out


def grafana_expand(expr: str, instance: str) -> str:
    """What Grafana sends for the dashboard's variables, for a 1 s scrape interval."""
    values = {"instance": instance, "__rate_interval": "4s", "__interval": "1s", "__range": "1h"}
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)
    assert "$" not in expanded, expanded
    return expanded


def test_dashboard_and_provisioning_are_consistent() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    (source,) = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/coop.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    (provider,) = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/coop.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def wait_scraped(prom: Prometheus, samples: int) -> None:
    query = f'count_over_time(up{{job="{JOB}"}}[1m]) >= {samples} and up{{job="{JOB}"}} == 1'
    wait_for(lambda: prom.query(query), timeout=30, interval=0.25, what=f"{samples} successful scrapes")


def test_every_dashboard_query_returns_series_from_a_real_prometheus(
    quiet_coordinator: Coordinator, tmp_path: Path
) -> None:
    require_prometheus()
    c = quiet_coordinator
    coop = populate(c)
    add_cpu_node(c, coop)  # for the CPU-only capacity panels
    add_pools(c)  # for the HPC pool panels
    # from here on the scheduler loop runs as in a coordinator (every second), on the in-process backend
    leader = Leadership(c.engine, c.settings.data_dir, c.settings.instance)
    scheduler = SchedulerLoop(c.engine, c.settings, coop.backend, leader)
    scheduler.start()
    target = urlparse(c.url).netloc
    try:
        with running_prometheus(tmp_path, target, METRICS_TOKEN) as prom:
            wait_scraped(prom, 5)  # enough samples for the 4 s rate windows
            empty = []
            for title, expr in dashboard_queries():
                query = grafana_expand(expr, target)
                try:
                    wait_for(lambda q=query: prom.query(q), timeout=10, interval=0.25)
                except AssertionError:
                    empty.append(f"{title}: {query}")
            assert not empty, "panel queries with no series:\n" + "\n".join(empty)

            # the alert rules load and evaluate; GPU 1 of gpu-a is at 88 C, so CoopGpuHot is pending, and
            # pool hpc-b did not answer its last refresh, so CoopPoolDown is too
            def rules() -> dict[str, Any]:
                groups = prom.api("rules")["groups"]
                found = {r["name"]: r for g in groups for r in g["rules"]}
                return found if all(r["health"] == "ok" for r in found.values()) else {}

            assert sorted(wait_for(rules, timeout=15, what="rules evaluated")) == sorted(ALERTS)

            def two_alerts() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = prom.api("alerts")["alerts"]
                return found if len(found) >= 2 else []

            alerts = wait_for(two_alerts, timeout=15, what="two alerts")
            seen = sorted(
                (a["labels"]["alertname"], a["labels"].get("node") or a["labels"]["pool"], a["state"]) for a in alerts
            )
            assert seen == [("CoopGpuHot", "gpu-a", "pending"), ("CoopPoolDown", "hpc-b", "pending")], seen
            hot = next(a for a in alerts if a["labels"]["alertname"] == "CoopGpuHot")
            assert hot["labels"]["gpu"] == "1"
    finally:
        scheduler.stop()
        leader.release()
        coop.heartbeats.stop()


def test_a_node_that_stops_heartbeating_is_down_in_the_first_scrape_after_its_timeout(
    quiet_coordinator: Coordinator, tmp_path: Path
) -> None:
    require_prometheus()
    c = quiet_coordinator
    c.new_member("alice")
    box = c.agent("alice").register_node(node("box", gpus=1))["id"]
    beats = Heartbeats(c.agent("alice"))
    up = 'coop_node_up{node="box"}'
    try:
        beats.set(box, telemetry((10.0, 1.0, 50.0, 100.0)))
        with running_prometheus(tmp_path, urlparse(c.url).netloc, METRICS_TOKEN) as prom:
            wait_for(lambda: prom.query(f"{up} == 1"), timeout=30, interval=0.25, what="box up in Prometheus")
            wait_for(lambda: prom.query('coop_gpu_temperature_celsius{node="box"}'), timeout=10, what="telemetry")
            beats.set(box, None)  # its agent falls silent
            beats.stop()
            (row,) = c.admin.nodes()
            silent_since = datetime.fromisoformat(row["last_heartbeat_at"]).timestamp()
            deadline = silent_since + c.settings.heartbeat_interval_s * c.settings.missed_heartbeats_offline

            wait_for(lambda: prom.query(f"{up} == 0"), timeout=15, interval=0.25, what="box down in Prometheus")
            samples = prom.samples(f"{up}[1m]")
            within = {v for t, v in samples if t < deadline - 0.1}  # scraped while it was still within its timeout
            after = [(t, v) for t, v in samples if t > deadline]
            assert within == {1.0}, samples
            # every scrape after the timeout shows it down; the first came within a scrape interval (+ jitter)
            assert after and {v for _, v in after} == {0.0}, samples
            assert after[0][0] <= deadline + 2 * INTERVAL_S, (deadline, samples)
            assert not prom.query('coop_gpu_temperature_celsius{node="box"}')  # no stale heat from a silent node
            assert prom.query('coop_nodes{state="offline", gpu_model="RTX4090"} == 1')
            assert c.admin.nodes()[0]["state"] == "online"  # no liveness loop here: the scrape judged it
    finally:
        beats.stop()


def test_no_number_panel_shows_nan_while_nothing_runs(quiet_coordinator: Coordinator, tmp_path: Path) -> None:
    """An idle cooperative (nodes up, no job, no pool): the stat, bar and table panels show numbers, never
    NaN (GPUs held was 0 / 0 while no GPU was in use)."""
    require_prometheus()
    c = quiet_coordinator
    c.new_member("alice")
    c.new_member("bob")
    box = c.agent("alice").register_node(node("box", gpus=2))["id"]
    beats = Heartbeats(c.agent("alice"))
    beats.set(box, telemetry((0.0, 0.0, 35.0, 20.0), (0.0, 0.0, 35.0, 20.0)))
    target = urlparse(c.url).netloc
    dashboard = json.loads(DASHBOARD.read_text())
    numbers = [(p["title"], t["expr"]) for p in dashboard["panels"] if p["type"] in ("stat", "bargauge", "table")
               for t in p["targets"]]  # fmt: skip
    try:
        with running_prometheus(tmp_path, target, METRICS_TOKEN) as prom:
            wait_scraped(prom, 5)
            shown: dict[str, list[str]] = {}
            for title, expr in numbers:
                result = prom.query(grafana_expand(expr, target))
                shown.setdefault(title, []).extend(str(r["value"][1]) for r in result)
            held = shown["Fair share: GPUs held vs entitled share"]
            thirds = str(1 / 3)  # the admins' member, alice and bob: each holds 0 and is entitled to a third
            assert sorted(held) == ["0"] * 3 + [thirds] * 3, held
            nan = {
                title: values for title, values in shown.items() if any(v in ("NaN", "+Inf", "-Inf") for v in values)
            }
            assert not nan, nan
    finally:
        beats.stop()
