"""The Helm chart (helm/paybridge): rendered and linted through Helm's own Go SDK
(helm-python-sdk), every object checked by kubernetes-validate --strict for the oldest and the
newest Kubernetes version the chart claims, the production manifests scanned by checkov, and
what an operator relies on asserted object by object."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from conftest import (
    CHART,
    NAMESPACE,
    PRODUCTION_VALUES,
    ROOT,
    Rendered,
    kube_version_range,
    load_yaml,
    merge,
    render,
    render_error,
)

OLDEST, NEWEST = kube_version_range()
# Custom resources have no schema in kubernetes-validate; these are the only ones the chart makes.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
}
VALUE_SETS = ["default", "production"]


@pytest.fixture(params=VALUE_SETS)
def any_render(request, default_render, production_render) -> Rendered:
    return {"default": default_render, "production": production_render}[request.param]


def secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def env_values(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


# --- Kubernetes versions, lint, schemas ---------------------------------------------------------


def test_kube_version_range_is_one_the_validator_has_schemas_for():
    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert OLDEST in shipped, f"kubernetes-validate has no schemas for {OLDEST}: {sorted(shipped)}"
    assert NEWEST in shipped, f"kubernetes-validate has no schemas for {NEWEST}: {sorted(shipped)}"


@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_helm_lint_has_no_errors_or_warnings(value_set, kube, production_values):
    values = production_values if value_set == "production" else None
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube}.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; 1 (info, e.g. "icon is recommended") is fine.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("kube", [OLDEST, NEWEST])
def test_every_rendered_object_is_valid_under_strict_schemas(any_render, kube):
    assert any_render.objects
    for obj in any_render.objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
                kubernetes_validate.validate(obj, f"{kube}.0", strict=True)
            continue
        try:
            validated = kubernetes_validate.validate(obj, f"{kube}.0", strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            pytest.fail(f"{name} is not valid for Kubernetes {kube}: {path}: {error.message}")
        assert validated == kube, f"{name} was validated against {validated}, not {kube}"


def test_the_strict_validator_refuses_unknown_fields(production_render):
    deployment = json.loads(json.dumps(production_render.one("Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, f"{NEWEST}.0", strict=True)


def test_values_files_pass_the_values_schema(production_values):
    with helm.Chart.load(CHART) as chart:
        assert chart.schema is not None
        chart.validate_schema(None)
        chart.validate_schema(production_values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"stripe": {"secretKey": "sk_live_123"}}, "set stripe.existingSecret"),
        ({"gateway": {"token": "abc"}}, "set gateway.existingSecret"),
        ({"replicaCount": "two"}, "/replicaCount': got string, want integer"),
        ({"replicas": 3}, "'replicas' not allowed"),
        ({"core": {"logFormat": "xml"}}, "/core/logFormat': value must be one of 'json', 'text'"),
        ({"core": {"reconcile": {"interval": "30"}}}, "/core/reconcile/interval'"),
        ({"database": {"url": "mysql://db/paybridge"}}, "/database/url'"),
        ({"image": {"digest": "latest"}}, "/image/digest'"),
        ({"stripe": {"maxRps": 0}}, "/stripe/maxRps'"),
        ({"gateway": {"trustedProxies": ["ingress-nginx"]}}, "/gateway/trustedProxies/0'"),
        ({"gateway": {"rateBurst": 0}}, "/gateway/rateBurst'"),


        ({"tracing": {"protocol": "http/json"}}, "/tracing/protocol'"),
        ({"tracing": {"samplerArg": "2"}}, "/tracing/samplerArg'"),
        ({"metrics": {"prometheusRule": {"stripeErrorRatio": 5}}}, "/metrics/prometheusRule/stripeErrorRatio'"),
    ],
)
def test_the_values_schema_refuses_wrong_values_with_a_readable_message(values, expected):
    message = render_error(values)
    assert expected in message


# --- refusals -----------------------------------------------------------------------------------


def test_sqlite_with_two_replicas_is_refused():
    message = render_error({"replicaCount": 2})
    assert "SQLite supports exactly one replica, but replicaCount is 2" in message
    assert "database.existingSecret" in message


def test_sqlite_with_a_development_url_and_two_replicas_is_refused():
    message = render_error({"replicaCount": 2, "database": {"url": "sqlite:/data/other.db"}})
    assert "SQLite supports exactly one replica" in message


def test_sqlite_without_a_volume_is_refused():
    message = render_error({"persistence": {"enabled": False}})
    assert "SQLite needs a PersistentVolumeClaim" in message


def test_sqlite_with_autoscaling_is_refused():
    assert "autoscaling.enabled must be false" in render_error({"autoscaling": {"enabled": True}})


def test_a_grace_period_shorter_than_the_drain_is_refused():
    message = render_error({"terminationGracePeriodSeconds": 20})
    assert "must be longer than preStopSleepSeconds + core.shutdownGraceSeconds (25)" in message


def test_postgresql_allows_several_replicas(production_values):
    values = merge(production_values, {"autoscaling": {"enabled": False}, "replicaCount": 4})
    assert render(values).one("Deployment")["spec"]["replicas"] == 4


# --- the workload -------------------------------------------------------------------------------


def test_the_pod_runs_the_core_and_the_gateway_from_one_image(production_render):
    pod = production_render.one("Deployment")["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["core", "gateway"]
    core, gateway = pod["containers"]
    assert core["args"] == ["serve", "--no-migrate"]
    assert gateway["args"] == ["gateway"]
    assert core["image"] == gateway["image"]
    assert core["image"] == "registry.example.internal/payments/paybridge@sha256:" + "0" * 64
    assert "command" not in core and "command" not in gateway  # the image's entrypoint: paybridge


def test_the_core_is_configured_for_a_pod(production_render):
    core = production_render.container("core")
    config = production_render.one("ConfigMap", "pb-paybridge")["data"]
    assert core["envFrom"] == [{"configMapRef": {"name": "pb-paybridge"}}]
    assert config["PAYBRIDGE_GRPC_ADDR"] == "0.0.0.0:50051"
    assert config["PAYBRIDGE_ADMIN_ADDR"] == "0.0.0.0:9090"
    assert config["PAYBRIDGE_LOG_FORMAT"] == "json"
    assert config["PAYBRIDGE_RETURN_URL"] == "https://pay.example.com/payment/return"
    assert config["PAYBRIDGE_PUBLIC_URL"] == "https://pay.example.com"
    assert config["PAYBRIDGE_TENANTS_FILE"] == "/etc/paybridge/tenants/tenants.toml"
    assert config["PAYBRIDGE_SHUTDOWN_GRACE"] == "20s"
    assert re.fullmatch(r"\d+(ms|s|m|h)", config["PAYBRIDGE_RECONCILE_INTERVAL"])
    assert re.fullmatch(r"\d+(ms|s|m|h)", config["PAYBRIDGE_RECONCILE_AFTER"])
    assert secret_refs(core) == {
        "PAYBRIDGE_DATABASE_URL": ("paybridge-database", "database-url"),
        "PAYBRIDGE_STRIPE_SECRET_KEY": ("paybridge-stripe", "secret-key"),
        "PAYBRIDGE_STRIPE_PUBLISHABLE_KEY": ("paybridge-stripe", "publishable-key"),
        "PAYBRIDGE_STRIPE_WEBHOOK_SECRET": ("paybridge-stripe", "webhook-secret"),
        "PAYBRIDGE_STRIPE_WEBHOOK_SECRET_PREVIOUS": ("paybridge-stripe", "webhook-secret-previous"),
        "PAYBRIDGE_GATEWAY_TOKEN_SHA256": ("paybridge-gateway", "token-sha256"),
    }
    previous = next(e for e in core["env"] if e["name"] == "PAYBRIDGE_STRIPE_WEBHOOK_SECRET_PREVIOUS")
    assert previous["valueFrom"]["secretKeyRef"]["optional"] is True
    mounts = {m["name"]: m for m in core["volumeMounts"]}
    assert mounts["tenants"]["mountPath"] == "/etc/paybridge/tenants"
    assert mounts["tenants"]["readOnly"] is True
    volumes = {v["name"]: v for v in production_render.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tenants"]["secret"]["secretName"] == "paybridge-tenants"
    assert volumes["tenants"]["secret"]["items"] == [{"key": "tenants.toml", "path": "tenants.toml"}]
    assert "data" not in volumes  # PostgreSQL: no volume


def test_the_gateway_talks_to_the_core_over_its_socket_on_a_shared_memory_volume(production_render):
    gateway = production_render.container("gateway")
    env = env_values(gateway)
    assert env["PAYBRIDGE_GATEWAY_ADDR"] == "0.0.0.0:8080"
    assert env["PAYBRIDGE_CORE_URL"] == "unix:///run/paybridge/core.sock"
    config = production_render.one("ConfigMap", "pb-paybridge")["data"]
    assert config["PAYBRIDGE_GRPC_SOCKET"] == "/run/paybridge/core.sock"
    core = production_render.container("core")
    for container in (core, gateway):
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["core-socket"]["mountPath"] == "/run/paybridge"
    volumes = {v["name"]: v for v in production_render.one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["core-socket"]["emptyDir"]["medium"] == "Memory"
    assert env["PAYBRIDGE_GATEWAY_ADMIN_ADDR"] == "0.0.0.0:9091"
    assert "PAYBRIDGE_ADMIN_ADDR" not in env
    assert env["PAYBRIDGE_LOG_FORMAT"] == "json"
    # The gateway holds only its own token: no database, no Stripe keys, no tenants.
    assert secret_refs(gateway) == {"PAYBRIDGE_GATEWAY_TOKEN": ("paybridge-gateway", "token")}
    assert [m["name"] for m in gateway["volumeMounts"]] == ["tmp", "core-socket"]


def test_probes(any_render):
    core = any_render.container("core")
    tls = "PAYBRIDGE_GRPC_TLS_CERT" in any_render.settings()["data"]
    for probe in ("startupProbe", "readinessProbe"):
        if tls:
            # The kubelet's gRPC probe speaks no TLS; the gateway's /readyz asks the core's health.
            assert core[probe]["tcpSocket"] == {"port": "grpc"}, probe
            assert "grpc" not in core[probe]
        else:
            assert core[probe]["grpc"] == {"port": 50051}, probe  # grpc.health.v1, service ""
    assert core["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    startup = core["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60

    gateway = any_render.container("gateway")
    assert gateway["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_graceful_shutdown_outlasts_the_drain(any_render):
    pod = any_render.one("Deployment")["spec"]["template"]["spec"]
    config = any_render.one("ConfigMap", "pb-paybridge")["data"]
    grace = int(config["PAYBRIDGE_SHUTDOWN_GRACE"].removesuffix("s"))
    for container in pod["containers"]:
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] > pause + grace, container["name"]


def test_security_context_of_every_pod_and_container(any_render):
    pods = [o["spec"]["template"]["spec"] for o in any_render.objects if o["kind"] in ("Deployment", "Job")]
    assert pods
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, container["name"]
            resources = container["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)
    account = any_render.one("ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def test_push_signing_secrets_are_mounted_from_their_secret_only_when_named():
    def pod(values):
        return render(values).one("Deployment")["spec"]["template"]["spec"]

    without = pod(None)
    assert "push-secrets" not in {v["name"] for v in without["volumes"]}
    with_secret = pod({"tenants": {"pushSecret": "paybridge-push-secrets"}})
    volumes = {v["name"]: v for v in with_secret["volumes"]}
    assert volumes["push-secrets"]["secret"] == {"secretName": "paybridge-push-secrets", "defaultMode": 0o440}
    core = next(c for c in with_secret["containers"] if c["name"] == "core")
    mounts = {m["name"]: m for m in core["volumeMounts"]}
    assert mounts["push-secrets"] == {
        "name": "push-secrets",
        "mountPath": "/etc/paybridge/push-secrets",
        "readOnly": True,
    }
    gateway = next(c for c in with_secret["containers"] if c["name"] == "gateway")
    assert "push-secrets" not in {m["name"] for m in gateway["volumeMounts"]}, "the gateway holds no secret"
    assert "/tenants/pushSecret'" in render_error({"tenants": {"pushSecret": "Not A Name"}})


def test_pods_roll_when_the_configuration_changes():
    def annotations(values):
        return render(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]

    before = annotations(None)
    assert annotations({"core": {"reconcile": {"interval": "1m"}}})["checksum/config"] != before["checksum/config"]
    assert annotations({"stripe": {"existingSecret": "stripe-v2"}})["checksum/secret-refs"] != before["checksum/secret-refs"]
    assert annotations(None) == before


def test_spread_across_nodes_and_zones(production_render):
    deployment = production_render.one("Deployment")
    pod = deployment["spec"]["template"]
    keys = {c["topologyKey"] for c in pod["spec"]["topologySpreadConstraints"]}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for constraint in pod["spec"]["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_standard_labels_on_every_object(any_render):
    for obj in any_render.objects:
        labels = obj["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"):
            assert key in labels, (obj["kind"], key)
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


# --- database -----------------------------------------------------------------------------------


def test_the_migration_hook_job_runs_before_install_and_upgrade(production_render):
    job = production_render.one("Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == production_render.container("core")["image"]
    assert secret_refs(container) == {"PAYBRIDGE_DATABASE_URL": ("paybridge-database", "database-url")}
    assert job["spec"]["backoffLimit"] >= 0 and job["spec"]["activeDeadlineSeconds"] > 0


def test_the_migration_job_may_use_its_own_database_url(production_values):
    two_urls = render(
        merge(
            production_values,
            {"database": {"migrations": {"existingSecret": "paybridge-database-owner", "existingSecretKey": "url"}}},
        )
    )
    [container] = two_urls.one("Job")["spec"]["template"]["spec"]["containers"]
    assert secret_refs(container) == {"PAYBRIDGE_DATABASE_URL": ("paybridge-database-owner", "url")}
    # The pods keep the row-only URL.
    assert secret_refs(two_urls.container("core"))["PAYBRIDGE_DATABASE_URL"] == ("paybridge-database", "database-url")


def test_sqlite_runs_one_pod_on_a_kept_volume_and_migrates_at_start(default_render):
    assert default_render.maybe("Job") is None
    deployment = default_render.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    core = default_render.container("core")
    assert core["args"] == ["serve"]
    assert env_values(core)["PAYBRIDGE_DATABASE_URL"] == "sqlite:/data/paybridge.db"
    assert {"name": "data", "mountPath": "/data"} in core["volumeMounts"]
    claim = default_render.one("PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def test_a_development_postgres_url_goes_into_a_hook_secret_made_before_the_job():
    rendered = render({"replicaCount": 2, "database": {"url": "postgres://dev:dev@postgres:5432/paybridge"}})
    secret = rendered.one("Secret")
    job = rendered.one("Job")
    weight = int(secret["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert secret_refs(rendered.container("core"))["PAYBRIDGE_DATABASE_URL"] == (secret["metadata"]["name"], "database-url")
    assert rendered.maybe("PersistentVolumeClaim") is None


# --- secrets ------------------------------------------------------------------------------------


def test_no_secret_values_in_the_rendered_manifests(production_render):
    assert production_render.all("Secret") == []
    text = production_render.manifest_text
    for needle in ("sk_live", "sk_test", "rk_live", "whsec_", "postgres://", "postgresql://", "password"):
        assert needle not in text, needle
    for obj in production_render.objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            for entry in container.get("env", []):
                if any(word in entry["name"] for word in ("SECRET", "TOKEN", "DATABASE_URL")):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), (container["name"], entry["name"])


# --- network, scale, observability --------------------------------------------------------------


def test_network_policy_opens_each_port_to_its_callers_only(production_render, production_values):
    policy = production_render.one("NetworkPolicy", "pb-paybridge")
    pod_labels = production_render.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = {tuple(p["port"] for p in rule["ports"]): rule["from"] for rule in policy["spec"]["ingress"]}
    peers = production_values["networkPolicy"]
    assert rules == {
        ("grpc",): peers["grpcFrom"],
        ("http",): peers["gatewayFrom"],
        ("metrics", "gateway-metrics"): peers["metricsFrom"],
    }
    named_ports = {p["name"] for c in production_render.one("Deployment")["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert {"grpc", "http", "metrics", "gateway-metrics"} <= named_ports
    migrate = production_render.one("NetworkPolicy", "pb-paybridge-migrate")
    assert "ingress" not in migrate["spec"] and migrate["spec"]["policyTypes"] == ["Ingress"]


def test_services_keep_the_core_internal_and_expose_the_gateway(production_render):
    core = production_render.one("Service", "pb-paybridge")
    gateway = production_render.one("Service", "pb-paybridge-gateway")
    assert core["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["targetPort"] for p in core["spec"]["ports"]} == {"grpc": "grpc", "metrics": "metrics"}
    assert {p["name"]: p["targetPort"] for p in gateway["spec"]["ports"]} == {"http": "http", "metrics": "gateway-metrics"}
    pod_labels = production_render.one("Deployment")["spec"]["template"]["metadata"]["labels"]
    for service in (core, gateway):
        assert service["spec"]["selector"].items() <= pod_labels.items()
    job_labels = production_render.one("Job")["spec"]["template"]["metadata"]["labels"]
    assert not core["spec"]["selector"].items() <= job_labels.items()


def test_the_ingress_routes_only_the_public_paths(production_render):
    ingress = production_render.one("Ingress")
    [rule] = ingress["spec"]["rules"]
    assert rule["host"] == "pay.example.com"
    paths = {(p["path"], p["pathType"]): p["backend"]["service"] for p in rule["http"]["paths"]}
    backend = {"name": "pb-paybridge-gateway", "port": {"name": "http"}}
    assert paths == {
        ("/payment/return", "Exact"): backend,
        ("/stripe/webhook", "Exact"): backend,
        # The hosted payment page (issue 18) and its static files.
        ("/pay", "Prefix"): backend,
        ("/assets", "Prefix"): backend,
    }
    assert ingress["spec"]["tls"] == [{"secretName": "paybridge-gateway-tls", "hosts": ["pay.example.com"]}]


def test_the_return_url_defaults_to_the_first_ingress_host():
    rendered = render({"ingress": {"enabled": True, "hosts": ["pay.example.org"]}})
    assert rendered.one("ConfigMap", "pb-paybridge")["data"]["PAYBRIDGE_RETURN_URL"] == "https://pay.example.org/payment/return"


def test_the_public_url_defaults_to_the_first_ingress_host_and_can_be_set():
    rendered = render({"ingress": {"enabled": True, "hosts": ["pay.example.org", "pay.example.net"]}})
    assert rendered.settings()["data"]["PAYBRIDGE_PUBLIC_URL"] == "https://pay.example.org"
    rendered = render(
        {
            "ingress": {"enabled": True, "hosts": ["pay.example.org"]},
            "core": {"publicUrl": "https://checkout.example.org/payments"},
        }
    )
    assert rendered.settings()["data"]["PAYBRIDGE_PUBLIC_URL"] == "https://checkout.example.org/payments"
    # Without an ingress or a publicUrl the binary takes the origin of PAYBRIDGE_RETURN_URL.
    rendered = render({"core": {"returnUrl": "https://pay.example.org/payment/return"}})
    assert "PAYBRIDGE_PUBLIC_URL" not in rendered.settings()["data"]


@pytest.mark.parametrize(
    "public_url", ["pay.example.org", "ftp://pay.example.org", "https://pay.example.org/?a=1", "https://u@pay.example.org"]
)
def test_a_public_url_that_is_not_an_http_base_is_refused(public_url):
    message = render_error({"ingress": {"enabled": True, "hosts": ["pay.example.org"]}, "core": {"publicUrl": public_url}})
    assert "/core/publicUrl'" in message


def test_stripe_js_is_stripes_unless_set():
    rendered = render({"ingress": {"enabled": True, "hosts": ["pay.example.org"]}})
    assert "PAYBRIDGE_STRIPE_JS_URL" not in env_values(rendered.container("gateway"))
    rendered = render(
        {
            "ingress": {"enabled": True, "hosts": ["pay.example.org"]},
            "gateway": {"stripeJsUrl": "https://js.stripe.example.internal/v3/"},
        }
    )
    assert env_values(rendered.container("gateway"))["PAYBRIDGE_STRIPE_JS_URL"] == "https://js.stripe.example.internal/v3/"
    message = render_error({"ingress": {"enabled": True, "hosts": ["pay.example.org"]}, "gateway": {"stripeJsUrl": "http://x/"}})
    assert "/gateway/stripeJsUrl'" in message


def test_pod_disruption_budget_and_autoscaler(production_render, production_values):
    deployment = production_render.one("Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the replica count
    hpa = production_render.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pb-paybridge"}
    assert hpa["spec"]["minReplicas"] == production_values["autoscaling"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] == production_values["autoscaling"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    pdb = production_render.one("PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_no_autoscaler_by_default(default_render):
    assert default_render.maybe("HorizontalPodAutoscaler") is None
    assert default_render.maybe("Ingress") is None
    assert default_render.maybe("ServiceMonitor") is None


def test_metrics_are_scraped(default_render, production_render):
    annotations = default_render.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    monitor = production_render.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    for service in production_render.all("Service"):
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_the_stripe_budget_and_the_reconciler_lease_are_configured(default_render, production_render):
    default = default_render.settings()["data"]
    assert default["PAYBRIDGE_STRIPE_MAX_RPS"] == "20"
    assert default["PAYBRIDGE_RECONCILE_INTERVAL"] == "5s"
    assert default["PAYBRIDGE_RECONCILE_LEASE"] == "8s"
    # The account's budget, shared by the replicas: it does not grow with the HPA.
    assert production_render.settings()["data"]["PAYBRIDGE_STRIPE_MAX_RPS"] == "80"
    custom = render({"stripe": {"maxRps": 25}, "core": {"reconcile": {"lease": "12s"}}})
    assert custom.settings()["data"]["PAYBRIDGE_STRIPE_MAX_RPS"] == "25"
    assert custom.settings()["data"]["PAYBRIDGE_RECONCILE_LEASE"] == "12s"


def test_the_gateways_limits_and_trusted_proxies_are_configured(default_render, production_render):
    default = env_values(default_render.container("gateway"))
    assert default["PAYBRIDGE_GATEWAY_RATE_LIMIT"] == "2"
    assert default["PAYBRIDGE_GATEWAY_RATE_BURST"] == "20"
    assert default["PAYBRIDGE_GATEWAY_TRUSTED_PROXIES"] == ""  # nobody: the peer is the client
    production = env_values(production_render.container("gateway"))
    assert production["PAYBRIDGE_GATEWAY_TRUSTED_PROXIES"] == "10.244.0.0/16"
    custom = env_values(
        render(
            {"gateway": {"rateLimit": 5, "rateBurst": 50, "trustedProxies": ["10.0.0.0/8", "fd00::/8"]}}
        ).container("gateway")
    )
    assert custom["PAYBRIDGE_GATEWAY_RATE_LIMIT"] == "5"
    assert custom["PAYBRIDGE_GATEWAY_RATE_BURST"] == "50"
    assert custom["PAYBRIDGE_GATEWAY_TRUSTED_PROXIES"] == "10.0.0.0/8,fd00::/8"


# PostgreSQL's default max_connections, less its superuser_reserved_connections.
POSTGRES_DEFAULT_CONNECTIONS = 100 - 3


def test_the_production_values_fit_postgresqls_default_connection_limit(production_render):
    """Every replica the HPA may run, plus the rollout's surge pod, holds its pool and one
    LISTEN connection; the migration Job holds one of each too."""
    hpa = production_render.one("HorizontalPodAutoscaler")
    surge = production_render.one("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
    pool = int(production_render.settings()["data"]["PAYBRIDGE_DATABASE_MAX_CONNECTIONS"])
    pods = hpa["spec"]["maxReplicas"] + surge
    needed = pods * (pool + 1) + 2
    assert needed <= POSTGRES_DEFAULT_CONNECTIONS, (
        f"{pods} pods × ({pool} pooled + 1 LISTEN) + 2 for the migration Job = {needed} connections"
    )


def test_the_notes_name_only_objects_the_chart_makes(default_render, production_render):
    for rendered in (default_render, production_render):
        kinds = {"deployment": "Deployment", "service": "Service", "job": "Job"}
        named = set(re.findall(r"\b(deployment|service|job)/([a-z0-9][-a-z0-9]*)", rendered.notes))
        assert named, rendered.notes
        for kind, name in named:
            assert [o for o in rendered.all(kinds[kind]) if o["metadata"]["name"] == name], (
                f"NOTES name {kind}/{name}, which the chart does not make: {rendered.kinds()}"
            )
    assert "deployment/pb-paybridge," in default_render.notes
    assert "service/pb-paybridge-gateway" in default_render.notes
    assert "job/pb-paybridge-migrate" in production_render.notes
    assert "job/" not in default_render.notes  # SQLite: no migration Job
    # The webhook endpoint's API version and events.
    assert "2026-09-30.endive" in production_render.notes
    for event in ("payment_intent.succeeded", "refund.updated", "charge.refunded", "charge.dispute.closed"):
        assert event in production_render.notes


# --- dashboard, alerts, tracing ----------------------------------------------------------------

ALERTS = [
    "PaybridgeStripeErrors",
    "PaybridgeStripeRateLimited",
    "PaybridgeWebhookSignatureFailures",
    "PaybridgePaymentsStuckCreating",
    "PaybridgePaymentsStuckProcessing",
    "PaybridgeReconcilerFailing",
    "PaybridgeGatewayErrors",
    "PaybridgeCoreNotReady",
    "PaybridgeAuthorizationsExpiring",
    "PaybridgePushBacklog",
    "PaybridgePushEventsGivenUp",
]


def test_no_dashboard_rules_or_tracing_by_default(default_render):
    assert default_render.maybe("PrometheusRule") is None
    assert all("grafana_dashboard" not in c["metadata"].get("labels", {}) for c in default_render.all("ConfigMap"))
    for container in default_render.one("Deployment")["spec"]["template"]["spec"]["containers"]:
        assert not [e for e in container.get("env", []) if e["name"].startswith("OTEL_")]


def test_the_dashboard_is_a_configmap_for_grafanas_sidecar(production_render):
    dashboards = [
        c for c in production_render.all("ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"
    ]
    assert len(dashboards) == 1
    config_map = dashboards[0]
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Payments"}
    dashboard = json.loads(config_map["data"]["paybridge.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["uid"] == "paybridge"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 20
    # Every panel reads one release's namespace, through the datasource variable.
    assert all('namespace="$namespace"' in e for e in exprs), exprs
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
    # The latency panels show exemplars (links to traces).
    assert any(t.get("exemplar") for p in dashboard["panels"] for t in p.get("targets", []))


def test_the_alerts_cover_the_on_call_and_each_has_a_runbook(production_render, production_values):
    rule = production_render.one("PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    assert [r["alert"] for r in rules] == ALERTS
    readme = (ROOT / "README.md").read_text()
    base = production_values["metrics"]["prometheusRule"]["runbookBaseUrl"]
    for r in rules:
        assert f'namespace="{NAMESPACE}"' in r["expr"], r
        assert "{{" not in r["expr"] and "}}" not in r["expr"], r
        assert r["labels"]["severity"] in ("critical", "warning")
        assert r["annotations"]["summary"]
        assert r["annotations"]["runbook_url"] == f"{base}#{r['alert'].lower()}"
        assert re.search(rf"^#### {r['alert']}$", readme, re.M), f"README has no runbook section for {r['alert']}"
    by_name = {r["alert"]: r for r in rules}
    assert by_name["PaybridgeStripeErrors"]["expr"].rstrip().endswith("> 0.05")
    assert by_name["PaybridgePaymentsStuckCreating"]["expr"].rstrip().endswith("> 600")


def test_without_a_runbook_url_the_alerts_name_their_readme_section():
    rendered = render({"metrics": {"prometheusRule": {"enabled": True}}})
    for group in rendered.one("PrometheusRule")["spec"]["groups"]:
        for r in group["rules"]:
            assert r["annotations"]["runbook"] == f"README.md, Runbook: {r['alert']}"


def test_tracing_exports_from_both_containers_when_an_endpoint_is_set(production_render):
    containers = production_render.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 2
    for container in containers:
        env = env_values(container)
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
        assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.25"
        # Each binary names its own service.
        assert "OTEL_SERVICE_NAME" not in env


def test_notes_tell_how_to_call_the_service(default_render, production_render):
    assert "pb-paybridge.payments.svc.cluster.local:50051" in default_render.notes
    assert "kubectl -n payments create secret generic pb-paybridge-stripe" in default_render.notes
    assert "port-forward service/pb-paybridge 50051:50051" in default_render.notes
    assert "https://pay.example.com/stripe/webhook" in production_render.notes
    assert "https://pay.example.com/pay/<token>" in production_render.notes
    assert "create secret generic paybridge-gateway" in production_render.notes


# --- checkov ------------------------------------------------------------------------------------


def test_checkov_finds_nothing_in_the_production_manifests(production_render, tmp_path: Path):
    checkov = os.environ.get("PAYBRIDGE_TEST_CHECKOV") or str(ROOT / ".tools" / "checkov-venv" / "bin" / "checkov")
    assert Path(checkov).is_file(), f"checkov not found at {checkov}: run scripts/test, which installs it"
    (tmp_path / "production.yaml").write_text(production_render.manifest_text)
    result = subprocess.run(
        [checkov, "--framework", "kubernetes", "--directory", str(tmp_path), "--output", "json",
         "--quiet", "--skip-download"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    assert result.stdout.strip(), f"checkov printed nothing (exit {result.returncode}): {result.stderr[-2000:]}"
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}" for c in results.get("failed_checks", [])]
    assert failed == [], "checkov failed checks:\n" + "\n".join(failed)
    assert report["summary"]["passed"] > 100
    for skipped in results.get("skipped_checks", []):
        # Each skip is declared in the template with a justification after "=".
        assert len(skipped.get("suppress_comment", "").strip()) > 20, skipped["check_id"]


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_builds_one_binary_into_a_small_non_root_image():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"(?m)^FROM\s+(\S+)", dockerfile)
    assert len(stages) == 2, stages
    assert "cargo build --release --locked --bin paybridge" in dockerfile
    assert re.search(r"(?m)^USER 65532:65532$", dockerfile)
    assert re.search(r'(?m)^ENTRYPOINT \["/usr/local/bin/paybridge"\]$', dockerfile)
    values = load_yaml(CHART / "values.yaml")
    assert values["podSecurityContext"]["runAsUser"] == 65532
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!src/" in ignored and "!migrations/" in ignored and "!proto/" in ignored


def test_production_values_file_is_shipped_beside_the_chart():
    assert PRODUCTION_VALUES.is_file()
    assert load_yaml(PRODUCTION_VALUES)["database"]["existingSecret"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["kubeVersion"]


# --- TLS on the core's gRPC port, and the reloaded files ---------------------------------------

TLS_ENV = ("PAYBRIDGE_GRPC_TLS_CERT", "PAYBRIDGE_GRPC_TLS_KEY", "PAYBRIDGE_GRPC_TLS_CLIENT_CA")


def volumes_of(rendered: Rendered) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in rendered.one("Deployment")["spec"]["template"]["spec"]["volumes"]}


def test_tls_is_off_by_default_and_the_files_are_followed(default_render):
    config = default_render.settings()["data"]
    assert not any(name in config for name in TLS_ENV)
    assert config["PAYBRIDGE_RELOAD_INTERVAL"] == "5s"
    assert default_render.maybe("Certificate") is None
    assert "grpc-tls" not in volumes_of(default_render)
    # The tenants Secret is mounted whole-key by items, never by subPath: updates reach the file.
    core = default_render.container("core")
    assert all("subPath" not in m for m in core["volumeMounts"])


def test_tls_from_an_existing_secret_mounts_it_whole_for_renewals():
    rendered = render({"core": {"tls": {"enabled": True, "existingSecret": "core-grpc-cert"}}})
    config = rendered.settings()["data"]
    assert config["PAYBRIDGE_GRPC_TLS_CERT"] == "/etc/paybridge/grpc-tls/tls.crt"
    assert config["PAYBRIDGE_GRPC_TLS_KEY"] == "/etc/paybridge/grpc-tls/tls.key"
    assert "PAYBRIDGE_GRPC_TLS_CLIENT_CA" not in config
    volume = volumes_of(rendered)["grpc-tls"]
    assert volume["secret"]["secretName"] == "core-grpc-cert"
    assert "items" not in volume["secret"]
    core = rendered.container("core")
    mount = next(m for m in core["volumeMounts"] if m["name"] == "grpc-tls")
    assert mount == {"name": "grpc-tls", "mountPath": "/etc/paybridge/grpc-tls", "readOnly": True}
    assert core["readinessProbe"]["tcpSocket"] == {"port": "grpc"}
    assert rendered.maybe("Certificate") is None
    # The gateway keeps the plain Unix socket and never sees the certificate.
    gateway = rendered.container("gateway")
    assert env_values(gateway)["PAYBRIDGE_CORE_URL"] == "unix:///run/paybridge/core.sock"
    assert [m["name"] for m in gateway["volumeMounts"]] == ["tmp", "core-socket"]


def test_tls_from_cert_manager_covers_the_core_services_names(production_render):
    certificate = production_render.one("Certificate")
    service = production_render.one("Service", "pb-paybridge")
    name = service["metadata"]["name"]
    spec = certificate["spec"]
    assert spec["secretName"] == "pb-paybridge-grpc-tls"
    assert volumes_of(production_render)["grpc-tls"]["secret"]["secretName"] == spec["secretName"]
    assert spec["dnsNames"][:4] == [name, f"{name}.{NAMESPACE}", f"{name}.{NAMESPACE}.svc", f"{name}.{NAMESPACE}.svc.cluster.local"]
    assert spec["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert spec["usages"] == ["server auth"]
    assert spec["privateKey"]["rotationPolicy"] == "Always"
    config = production_render.settings()["data"]
    # Client certificates are checked against the CA cert-manager writes beside the certificate.
    assert config["PAYBRIDGE_GRPC_TLS_CLIENT_CA"] == "/etc/paybridge/grpc-tls/ca.crt"


def test_more_dns_names_and_a_client_ca_of_its_own():
    rendered = render(
        {
            "core": {
                "tls": {
                    "enabled": True,
                    "certManager": {"enabled": True, "issuerRef": {"name": "ca", "kind": "Issuer"}, "dnsNames": ["payments.internal"]},
                    "clientCA": {"enabled": True, "existingSecret": "tenant-ca", "key": "bundle.pem"},
                }
            }
        }
    )
    spec = rendered.one("Certificate")["spec"]
    assert spec["dnsNames"][-1] == "payments.internal"
    assert spec["issuerRef"]["kind"] == "Issuer"
    config = rendered.settings()["data"]
    assert config["PAYBRIDGE_GRPC_TLS_CLIENT_CA"] == "/etc/paybridge/grpc-client-ca/bundle.pem"
    assert volumes_of(rendered)["grpc-client-ca"]["secret"]["secretName"] == "tenant-ca"
    mounts = {m["name"]: m["mountPath"] for m in rendered.container("core")["volumeMounts"]}
    assert mounts["grpc-client-ca"] == "/etc/paybridge/grpc-client-ca"


def test_pointing_at_another_tls_secret_rolls_the_pods():
    def refs(secret: str) -> str:
        rendered = render({"core": {"tls": {"enabled": True, "existingSecret": secret}}})
        return rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/secret-refs"]

    assert refs("grpc-cert-v1") != refs("grpc-cert-v2")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"core": {"tls": {"enabled": True}}}, "core.tls.enabled needs a certificate"),
        (
            {"core": {"tls": {"enabled": True, "existingSecret": "x", "certManager": {"enabled": True, "issuerRef": {"name": "ca"}}}}},
            "set either existingSecret",
        ),
        ({"core": {"tls": {"enabled": True, "certManager": {"enabled": True}}}}, "needs core.tls.certManager.issuerRef.name"),
        ({"core": {"tls": {"clientCA": {"enabled": True}}}}, "core.tls.clientCA.enabled needs core.tls.enabled"),
        ({"core": {"reloadInterval": "5"}}, "/core/reloadInterval'"),
        ({"core": {"tls": {"certManager": {"issuerRef": {"kind": "Cluster"}}}}}, "/core/tls/certManager/issuerRef/kind'"),
    ],
)
def test_tls_settings_that_cannot_work_are_refused(values, expected):
    assert expected in render_error(values)
