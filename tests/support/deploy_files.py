"""The deploy files (deploy/, examples/kubernetes/) as the tests read them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "safe-redbeat.rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "safe-redbeat.rules.test.yml"
KUSTOMIZE = DEPLOY / "kubernetes"
DASHBOARD = DEPLOY / "grafana" / "safe-redbeat.json"
EXAMPLE = ROOT / "examples" / "kubernetes"

_METRIC = re.compile(r"\bsafe_redbeat_[a-z_]+\b")


def documents(path: Path) -> list[dict[str, Any]]:
    """Every YAML document of ``path`` (manifests may hold several)."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def manifests(folder: Path) -> dict[str, dict[str, Any]]:
    """The Kubernetes objects of the ``*.yaml`` files in ``folder``, by kind (one each)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        for doc in documents(path):
            kind = str(doc.get("kind"))
            assert kind not in found, f"{path}: a second {kind}"
            found[kind] = doc
    return found


def rule_expressions() -> list[str]:
    [rules] = documents(RULES)
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def metric_names(expressions: list[str]) -> set[str]:
    """Every ``safe_redbeat_*`` name the PromQL expressions use."""
    return {name for expr in expressions for name in _METRIC.findall(expr)}
