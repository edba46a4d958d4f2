"""deploy/ and examples/kubernetes/: they parse, fit together, and the alert rules pass
their promtool unit tests. (tests/integration/test_deploy_live.py checks the names against
a real beat's scrape.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from safe_redbeat.metrics import DEPRECATED_NAMES
from tests.support.deploy_files import (
    EXAMPLE,
    KUSTOMIZE,
    RULES,
    RULES_TEST,
    dashboard,
    dashboard_expressions,
    documents,
    manifests,
    metric_names,
    rule_expressions,
)

#: The alerts the rules must have (and their promtool tests exercise).
ALERTS = {
    "SafeRedBeatNoLeader",
    "SafeRedBeatShardWithoutLeader",
    "SafeRedBeatLeadershipFlapping",
    "SafeRedBeatDispatchLag",
    "SafeRedBeatDeadLetters",
    "SafeRedBeatReconcileStale",
    "SafeRedBeatRemovalsHeld",
    "SafeRedBeatPendingGrowing",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool is missing in CI: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus ships it)")
    return found


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    tool = promtool()
    checked = subprocess.run(
        [tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [tool, "test", "rules", str(RULES_TEST)], capture_output=True, text=True, timeout=60
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_unit_tested() -> None:
    [rules] = documents(RULES)
    names = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert names >= ALERTS
    [tests] = documents(RULES_TEST)
    tested = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == names, "every alert has a promtool case where it fires"


def test_the_prometheus_rule_holds_the_tested_rules() -> None:
    [rules] = documents(RULES)
    rule = manifests(KUSTOMIZE)["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == rules


def test_rules_and_dashboard_use_no_deprecated_metric_names() -> None:
    used = metric_names(rule_expressions() + dashboard_expressions())
    assert not used & set(DEPRECATED_NAMES)
    assert "safe_redbeat_leads_shard" in used


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _selects(selector: dict[str, Any], labels: dict[str, Any]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def _check_deployment(deployment: dict[str, Any]) -> dict[str, Any]:
    """3 replicas; httpGet probes on a declared port: /healthz (startup, liveness), /readyz."""
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    labels = spec["template"]["metadata"]["labels"]
    assert _selects(spec["selector"], labels)
    container = _container(deployment)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 9808}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert "exec" not in container[probe]
        assert get["port"] in ports, f"{probe} probes a port the container declares"
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    return labels  # type: ignore[no-any-return]


def test_the_kustomize_base_fits_together() -> None:
    [kustomization] = documents(KUSTOMIZE / "kustomization.yaml")
    resources = set(kustomization["resources"])
    assert resources == {p.name for p in KUSTOMIZE.glob("*.yaml")} - {"kustomization.yaml"}
    found = manifests(KUSTOMIZE)
    assert set(found) == {
        "Kustomization",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "PodMonitor",
        "PrometheusRule",
    }
    labels = _check_deployment(found["Deployment"])
    [component_path] = kustomization["components"]
    component = KUSTOMIZE / component_path
    [grafana] = documents(component / "kustomization.yaml")
    assert grafana["kind"] == "Component"
    [dashboard] = grafana["configMapGenerator"]
    assert [(component / name).is_file() for name in dashboard["files"]] == [True]
    assert json.loads((component / dashboard["files"][0]).read_text())["panels"]
    assert dashboard["options"]["labels"] == {"grafana_dashboard": "1"}
    image = _container(found["Deployment"])["image"]
    assert image.split(":")[0] == kustomization["images"][0]["name"]
    assert _selects(found["PodDisruptionBudget"]["spec"]["selector"], labels)
    service = found["Service"]["spec"]
    assert all(labels.get(k) == v for k, v in service["selector"].items())
    assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
    assert [port["targetPort"] for port in service["ports"]] == ["http"]
    monitor = found["PodMonitor"]["spec"]
    assert _selects(monitor["selector"], labels)
    [endpoint] = monitor["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    [relabel] = endpoint["relabelings"]
    assert (relabel["targetLabel"], relabel["replacement"]) == ("job", "celery-beat")
    assert all('job="celery-beat"' in expr for expr in rule_expressions())


def test_the_kubernetes_example_probes_over_http_on_the_port_its_config_sets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = manifests(EXAMPLE)
    _check_deployment(found["Deployment"])
    config = found["ConfigMap"]["data"]["celeryconfig.py"]
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://broker")
    monkeypatch.setenv("REDBEAT_REDIS_URL", "redis://schedule")
    settings: dict[str, Any] = {}
    exec(compile(config, "celeryconfig.py", "exec"), settings)
    assert settings["safe_redbeat_http_port"] == 9808
    assert settings["beat_scheduler"] == "safe_redbeat.SafeRedBeatScheduler"
    assert _selects(found["PodDisruptionBudget"]["spec"]["selector"], found["Deployment"]
                    ["spec"]["template"]["metadata"]["labels"])  # fmt: skip


def test_the_dashboard_has_every_panel_the_issue_asks_for() -> None:
    board = dashboard()
    assert board["uid"] == "safe-redbeat"
    used = metric_names(dashboard_expressions())
    for name in (
        "safe_redbeat_leads_shard",  # leader per shard
        "safe_redbeat_leadership_changes_total",  # failovers
        "safe_redbeat_occurrences_sent_total",  # sent per minute
        "safe_redbeat_dispatch_lag_seconds_bucket",  # lag
        "safe_redbeat_pending_occurrences",
        "safe_redbeat_dead_occurrences",
        "safe_redbeat_reconcile_last_success_timestamp_seconds",  # reconcile age
        "safe_redbeat_loader_held_removals",
    ):
        assert name in used, name
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}"
        assert panel["gridPos"]["x"] >= 0 and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_yaml_files_parse() -> None:
    for folder in (KUSTOMIZE, EXAMPLE, RULES.parent):
        for path in folder.glob("*.y*ml"):
            assert documents(path), path
    assert yaml.safe_load(RULES_TEST.read_text())["rule_files"] == [RULES.name]
