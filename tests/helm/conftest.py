"""Shared helpers for the Helm chart's tests: render the chart through Helm's Go SDK
(helm-python-sdk, no helm binary) and parse what it renders."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "paybridge"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE = "pb"
NAMESPACE = "payments"


def load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges override into a copy of base (like a second -f values file)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


class Rendered:
    """The output of one render: template path -> text, and the parsed objects."""

    def __init__(self, templates: dict[str, str]):
        self.templates = templates
        self.notes = next((t for p, t in templates.items() if p.endswith("NOTES.txt")), "")
        self.objects: list[dict[str, Any]] = []
        for path, text in sorted(templates.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    self.objects.append(doc)

    @property
    def manifest_text(self) -> str:
        return "\n---\n".join(t for p, t in sorted(self.templates.items()) if not p.endswith("NOTES.txt"))

    def kinds(self) -> list[str]:
        return sorted(o["kind"] for o in self.objects)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}: {self.kinds()}"
        return found[0]

    def settings(self) -> dict[str, Any]:
        """The ConfigMap of the processes' settings (not the Grafana dashboard's)."""
        found = [c for c in self.all("ConfigMap") if "grafana_dashboard" not in c["metadata"].get("labels", {})]
        assert len(found) == 1, f"expected one settings ConfigMap, found {len(found)}: {self.kinds()}"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        assert len(found) <= 1
        return found[0] if found else None

    def container(self, name: str) -> dict[str, Any]:
        pod = self.one("Deployment")["spec"]["template"]["spec"]
        return next(c for c in pod["containers"] if c["name"] == name)


def render(values: dict[str, Any] | None = None) -> Rendered:
    with helm.Chart.load(CHART) as chart:
        return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True))


def render_error(values: dict[str, Any]) -> str:
    """Renders values the chart must refuse and returns Helm's message."""
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    return str(caught.value)


def kube_version_range() -> tuple[str, str]:
    """The oldest and newest Kubernetes minor versions Chart.yaml's kubeVersion claims
    (a ">=1.A.0-0 <1.B.0-0" range: oldest 1.A, newest 1.(B-1))."""
    constraint = load_yaml(CHART / "Chart.yaml")["kubeVersion"]
    match = re.fullmatch(r">=\s*1\.(\d+)\.0(?:-0)?\s+<\s*1\.(\d+)\.0(?:-0)?", constraint.strip())
    assert match, f"kubeVersion {constraint!r} is not a '>=1.A.0-0 <1.B.0-0' range"
    low, high = int(match[1]), int(match[2])
    assert low < high
    return f"1.{low}", f"1.{high - 1}"


@pytest.fixture(scope="session")
def production_values() -> dict[str, Any]:
    return load_yaml(PRODUCTION_VALUES)


@pytest.fixture(scope="session")
def default_render() -> Rendered:
    return render()


@pytest.fixture(scope="session")
def production_render(production_values: dict[str, Any]) -> Rendered:
    return render(production_values)
