"""deploy/ checked by real tools and by the structure that matters in production.

promtool (Debian's `prometheus` package, `make tools`) checks the Prometheus config, the alert rules,
their unit tests and every PromQL expression of the Grafana dashboard. The rest parses every YAML
and JSON file and checks what would otherwise only show up at deploy time: probes on the right
paths and port, resources, non-root, selectors that select, secrets referenced and never committed,
metric names that the processes really export.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import load_settings
from tests.prometheus_tools import promtool_path

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts.test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "postback-router.json"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"

JOBS = {"worker": "postback-worker", "dispatcher": "postback-dispatcher", "api": "postback-api"}

# What the processes export (README, Metrics), by type: alerts and dashboard may use nothing else.
COUNTERS = {
    "postback_conversions_consumed_total",
    "postback_conversions_invalid_total",
    "postback_matched_total",
    "postback_filtered_total",
    "postback_pii_unusable_total",
    "postback_rules_invalid_total",
    "postback_deliveries_total",
    "postback_dead_letter_total",
    "postback_delivery_attempts_total",
    "postback_duplicates_skipped_total",
    "postback_replay_requests_total",
    "postback_dispatch_task_failures_total",
    "postback_kafka_retries_total",
    "postback_kafka_unwritable_records_total",
    "postback_api_requests_total",
    "postback_intake_total",
}
GAUGES = {
    "postback_rules_campaigns",
    "postback_offer_sources",
    "postback_deliveries_pending",
    "postback_circuit_open",
    "postback_dispatch_paused",
    "postback_consumer_lag",
    "postback_ready",
    "postback_build_info",
    "postback_platform_api_days_to_sunset",
}
HISTOGRAMS = {
    "postback_match_batch_seconds",
    "postback_match_batch_size",
    "postback_delivery_duration_seconds",
    "postback_end_to_end_seconds",
    "postback_api_request_duration_seconds",
}
# prometheus_client's process and GC collectors, and Prometheus' own per-target series.
STANDARD = {
    "up",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "python_gc_objects_collected_total",
    "python_gc_objects_uncollectable_total",
    "python_gc_collections_total",
    "python_info",
}
EXPORTED = (
    COUNTERS
    | GAUGES
    | STANDARD
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
)
METRIC_TOKEN = re.compile(r"\b((?:postback|process|python)_[a-z_]+)")
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|CREDENTIALS?)$|^POSTBACK_SECRET_")


# --- loading -------------------------------------------------------------------------------------


def _files(*patterns: str) -> list[Path]:
    found = {path for pattern in patterns for path in DEPLOY.rglob(pattern)}
    # deploy/secrets/ holds local, git-ignored secrets for docker compose: not ours to parse.
    return sorted(path for path in found if "secrets" not in path.relative_to(DEPLOY).parts)


@functools.cache
def _yaml_docs(path: Path) -> list[Any]:
    """The non-empty documents of a YAML file (parsed once per run: callers must not modify them)."""
    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc is not None]


def _yaml(path: Path) -> Any:
    docs = _yaml_docs(path)
    assert len(docs) == 1, f"{path}: expected one YAML document, found {len(docs)}"
    return docs[0]


def _kube_objects() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for doc in _yaml_docs(path):
            if doc.get("kind") != "Kustomization":
                objects.append(doc)
    return objects


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [obj for obj in _kube_objects() if obj["kind"] == kind]


def _named(kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in _of_kind(kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r}, found {len(matches)}"
    return matches[0]


def _deployments() -> list[dict[str, Any]]:
    deployments = _of_kind("Deployment")
    assert deployments, "no Deployment under deploy/kubernetes"
    return deployments


def _config_data() -> dict[str, str]:
    data: dict[str, str] = _named("ConfigMap", "postback-router-config")["data"]
    return data


def _pod_labels(deployment: Mapping[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return labels


def _containers(deployment: Mapping[str, Any]) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _yaml(COMPOSE)
    return compose


def _alert_rules() -> list[dict[str, Any]]:
    rules = [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]
    return [rule for rule in rules if "alert" in rule]


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in _dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    return [
        (f"panel {panel['id']} ({panel['title']}) target {target['refId']}", target["expr"])
        for panel in _dashboard_panels()
        for target in panel.get("targets", [])
    ]


def _promtool(*args: str | Path, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool_path()), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )


# --- every file parses ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", _files("*.yml", "*.yaml"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    docs = _yaml_docs(path)
    assert docs, f"{path}: no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document should be a mapping"


@pytest.mark.parametrize("path", _files("*.json"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_file_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def test_there_is_something_to_parse() -> None:
    assert len(_files("*.yml", "*.yaml")) >= 10
    assert _files("*.json") == [DASHBOARD]


# --- Prometheus: promtool ------------------------------------------------------------------------


def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", ALERTS)
    _assert_ok(result)
    assert f"SUCCESS: {len(_yaml(ALERTS)['groups'][0]['rules'])} rules found" in result.stdout


def test_promtool_check_config_resolves_the_rules_file() -> None:
    assert _yaml(PROMETHEUS_CONFIG)["rule_files"] == ["alerts.yml"]
    # From elsewhere, so that the rule file is found relative to the config, as Prometheus does.
    result = _promtool("check", "config", PROMETHEUS_CONFIG, cwd=REPO)
    _assert_ok(result)
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert "rules found" in result.stdout


def test_promtool_test_rules() -> None:
    _assert_ok(_promtool("test", "rules", ALERTS_TEST.name))


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    spec = _yaml(ALERTS_TEST)
    assert spec["rule_files"] == ["alerts.yml"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - fired == set(), "alerts never shown firing in alerts.test.yml"
    assert names - silent == set(), "alerts never shown silent (healthy series) in alerts.test.yml"
    assert (fired | silent) - names == set(), "alerts.test.yml tests alerts that alerts.yml does not have"


def test_alerts_have_severity_duration_and_annotations() -> None:
    for rule in _alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"Postback[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert re.fullmatch(r"\d+m", rule.get("for", "")), f"{name}: no `for:` of whole minutes"
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        assert annotations["runbook"] == f"README.md#alert-{name.lower()}", name
        assert annotations["summary"].strip() and len(annotations["description"]) > 40, name


def test_alert_expressions_use_exported_metrics_only() -> None:
    for rule in _alert_rules():
        used = set(METRIC_TOKEN.findall(rule["expr"]))
        assert used <= EXPORTED, f"{rule['alert']}: not exported: {sorted(used - EXPORTED)}"
    used_everywhere = {name for rule in _alert_rules() for name in METRIC_TOKEN.findall(rule["expr"])}
    # The alerts the issue asks for, by the metric each stands on.
    for metric in (
        "postback_consumer_lag",
        "postback_dead_letter_total",
        "postback_delivery_attempts_total",
        "postback_circuit_open",
        "postback_conversions_consumed_total",
        "postback_ready",
    ):
        assert metric in used_everywhere, f"no alert on {metric}"


def test_the_processes_register_every_metric_the_alerts_and_dashboard_rely_on() -> None:
    """A renamed metric would leave an alert silently never firing: each name must be in the code."""
    literals = {
        literal
        for package in ("postback_router", "streams", "dispatchers", "service")
        for path in (REPO / package).rglob("*.py")
        for literal in re.findall(r"[\"'](postback_[a-z_]+)[\"']", path.read_text(encoding="utf-8"))
    }
    for name in sorted(COUNTERS | GAUGES | HISTOGRAMS):
        # prometheus_client adds `_total` to a Counter's name and `_info` to an Info's.
        registered = {name, name.removesuffix("_total"), name.removesuffix("_info")}
        assert registered & literals, f"no process registers {name}"


def test_alerts_select_the_scrape_job_names() -> None:
    jobs = {job for rule in _alert_rules() for job in re.findall(r'job="([^"]+)"', rule["expr"])}
    jobs |= {rule["labels"]["job"] for rule in _alert_rules() if "job" in rule["labels"]}
    assert jobs == set(JOBS.values())


def test_compose_prometheus_scrapes_every_process_by_job_name() -> None:
    compose = _compose()
    port = int(compose["x-postback-router"]["environment"]["HTTP_PORT"])
    scrape = {job["job_name"]: job for job in _yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    for service, job in JOBS.items():
        assert job in scrape, f"no scrape job {job}"
        (sd,) = scrape[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == port, job
        assert service in compose["services"], f"scrape job {job} looks for a compose service {service}"


# --- Grafana -------------------------------------------------------------------------------------


def test_dashboard_has_panels_with_targets() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [panel for panel in _dashboard_panels() if panel["type"] != "row"]
    assert len(panels) >= 20
    ids = [panel["id"] for panel in _dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel["title"], panel["id"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no targets"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    boxes = [(panel["title"], panel["gridPos"]) for panel in _dashboard_panels()]
    for title, box in boxes:
        assert box["x"] >= 0 and box["x"] + box["w"] <= 24, f"{title}: outside the 24-column grid"
    for i, (title_a, a) in enumerate(boxes):
        for title_b, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"]
                or b["x"] + b["w"] <= a["x"]
                or a["y"] + a["h"] <= b["y"]
                or b["y"] + b["h"] <= a["y"]
            )
            assert apart, f"panels {title_a!r} and {title_b!r} overlap"


def test_dashboard_uses_exported_metrics_only() -> None:
    queries = [expr for _, expr in _dashboard_exprs()]
    for var in _dashboard()["templating"]["list"]:
        query = var.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query or ""))
    used = {name for query in queries for name in METRIC_TOKEN.findall(query)}
    assert used - EXPORTED == set(), "the dashboard queries metrics nobody exports"
    # It shows each process role's main metrics.
    for metric in ("postback_conversions_consumed_total", "postback_deliveries_total", "postback_api_requests_total"):
        assert metric in used


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every target as a recording rule, through `promtool check rules` (Grafana variables filled in)."""
    rules: list[dict[str, Any]] = []
    for where, expr in _dashboard_exprs():
        promql = re.sub(r"\$__\w+", "5m", expr)
        promql = re.sub(r"\$\{?\w+\}?", ".*", promql)
        rules.append({"record": f"dashboard:query_{len(rules)}", "expr": promql, "labels": {"where": where}})
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = _promtool("check", "rules", rules_file)
    _assert_ok(result)
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus() -> None:
    grafana = _compose()["services"]["grafana"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in grafana["volumes"] if volume.startswith("./"))
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = _yaml(provisioning / "dashboards" / "postback-router.yml")["providers"]
    dashboards_in_container = provider["options"]["path"]
    host_dir = next(host for host, target in mounts.items() if target == dashboards_in_container)
    assert (DEPLOY / host_dir).resolve() == DASHBOARD.parent
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_in_container}/{DASHBOARD.name}"
    (datasource,) = _yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in _compose()["services"]["prometheus"]["ports"]


# --- Kubernetes ----------------------------------------------------------------------------------


def _probe_port(container: Mapping[str, Any], probe: Mapping[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def _cpu(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def test_every_deployment_has_probes_on_the_http_port() -> None:
    http_port = int(_config_data()["HTTP_PORT"])
    for deployment in _deployments():
        for container in _containers(deployment):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            liveness, readiness = container["livenessProbe"], container["readinessProbe"]
            assert liveness["httpGet"]["path"] == "/healthz", where
            assert readiness["httpGet"]["path"] == "/readyz", where
            assert _probe_port(container, liveness) == http_port, where
            assert _probe_port(container, readiness) == http_port, where
            if "startupProbe" in container:
                assert container["startupProbe"]["httpGet"]["path"] == "/healthz", where


def test_every_deployment_has_requests_and_limits() -> None:
    for deployment in _deployments():
        for container in _containers(deployment):
            where = f"{deployment['metadata']['name']}/{container['name']}"
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert set(requests) >= {"cpu", "memory"} and set(limits) >= {"cpu", "memory"}, where
            assert _cpu(requests["cpu"]) <= _cpu(limits["cpu"]), where
            assert _bytes(requests["memory"]) <= _bytes(limits["memory"]), where


def test_every_deployment_runs_as_non_root_read_only() -> None:
    for deployment in _deployments():
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"].get("runAsUser", 10001) != 0, name
        assert pod.get("automountServiceAccountToken") is False, name
        mounts_by_container = {
            c["name"]: {m["mountPath"] for m in c.get("volumeMounts", [])} for c in pod["containers"]
        }
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            # A read-only root: wherever the process writes must be a volume.
            assert "/tmp" in mounts_by_container[container["name"]], name


def test_deployments_run_the_image_and_settings() -> None:
    config_maps = {obj["metadata"]["name"] for obj in _of_kind("ConfigMap")}
    service_accounts = {obj["metadata"]["name"] for obj in _of_kind("ServiceAccount")}
    kustomization = _yaml(KUBERNETES / "kustomization.yaml")
    images = {image["name"] for image in kustomization["images"]}
    state_dir = _config_data()["STATE_DIR"]
    commands: dict[str, list[str]] = {}
    for deployment in _deployments():
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert _selects(deployment["spec"]["selector"]["matchLabels"], _pod_labels(deployment)), name
        assert pod["serviceAccountName"] in service_accounts, name
        (container,) = pod["containers"]
        assert container["image"] in images, name
        assert {ref["configMapRef"]["name"] for ref in container["envFrom"]} <= config_maps, name
        commands[_pod_labels(deployment)["app.kubernetes.io/component"]] = container["args"]
        if container["args"][0] in ("worker", "dispatch"):
            # RocksDB state on a volume: the root filesystem is read-only.
            assert state_dir in {m["mountPath"] for m in container["volumeMounts"]}, name
    assert commands == {"worker": ["worker"], "dispatcher": ["dispatch", "--kind", "all"], "api": ["api"]}


def test_configmap_settings_are_valid_for_the_service() -> None:
    data = _config_data()
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values must be strings"
    settings = load_settings(data)
    assert settings.state_dir == "/var/lib/postback-router"
    assert settings.http_port == 8080


def test_worker_hpa_targets_the_worker_deployment_within_the_partitions() -> None:
    (hpa,) = _of_kind("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["apiVersion"] == "apps/v1"
    worker = _named("Deployment", target["name"])
    assert _pod_labels(worker)["app.kubernetes.io/component"] == "worker"
    # The HPA owns the replica count; a `replicas` in the manifest would reset it on every apply.
    assert "replicas" not in worker["spec"]
    partitions = int(_config_data()["TOPIC_PARTITIONS"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    metrics = hpa["spec"]["metrics"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)


def test_every_pdb_selects_a_deployment_and_every_deployment_has_one() -> None:
    pod_labels = {d["metadata"]["name"]: _pod_labels(d) for d in _deployments()}
    covered: set[str] = set()
    for pdb in _of_kind("PodDisruptionBudget"):
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = {name for name, labels in pod_labels.items() if _selects(selector, labels)}
        assert len(matched) == 1, f"PDB {pdb['metadata']['name']} selects {sorted(matched)}"
        covered |= matched
        assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])
    assert covered == set(pod_labels)


def test_services_select_existing_pods_on_a_named_port() -> None:
    services = _of_kind("Service")
    assert services
    for service in services:
        name = service["metadata"]["name"]
        targets = [d for d in _deployments() if _selects(service["spec"]["selector"], _pod_labels(d))]
        assert targets, f"Service {name} selects no pods"
        for port in service["spec"]["ports"]:
            for deployment in targets:
                names = {p["name"] for c in _containers(deployment) for p in c["ports"]}
                assert port["targetPort"] in names, f"Service {name}: no container port {port['targetPort']!r}"
    api = _named("Service", "postback-router-api")
    assert api["spec"]["selector"]["app.kubernetes.io/component"] == "api"


def test_podmonitor_names_jobs_as_the_alerts_expect() -> None:
    (monitor,) = _of_kind("PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [d for d in _deployments() if _selects(selector, _pod_labels(d))]
    assert len(selected) == len(_deployments())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    for deployment in selected:
        assert endpoint["port"] in {p["name"] for c in _containers(deployment) for p in c["ports"]}
    (relabel,) = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    for deployment in selected:
        component = _pod_labels(deployment)["app.kubernetes.io/component"]
        match = re.fullmatch(relabel["regex"], component)
        assert match, component
        assert match.expand(relabel["replacement"].replace("$1", r"\1")) == JOBS[component]


def test_kustomizations_list_every_manifest() -> None:
    for kustomization in sorted(KUBERNETES.rglob("kustomization.yaml")):
        listed = set(_yaml(kustomization)["resources"])
        present = {p.name for p in kustomization.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
        assert listed == present, f"{kustomization}: resources {sorted(listed)} but files {sorted(present)}"


def test_secrets_are_referenced_never_committed() -> None:
    for path in _files("*.yml", "*.yaml"):
        for doc in _yaml_docs(path):
            if doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), f"{path}: a Secret with values"
    assert not [key for key in _config_data() if SECRET_NAME.search(key)], "secrets in the ConfigMap"
    secret_refs: dict[str, set[str]] = {}
    for deployment in _deployments():
        name = deployment["metadata"]["name"]
        for container in _containers(deployment):
            for env in container.get("env", []):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env, f"{name}: {env['name']} has a plaintext value"
                    ref = env["valueFrom"]["secretKeyRef"]
                    secret_refs.setdefault(ref["name"], set()).add(ref["key"])
    assert secret_refs == {"postback-router-api": {"API_TOKEN", "INTAKE_SECRET"}}
    # The dispatchers read platform secrets as files from the mounted Secret.
    dispatcher = _named("Deployment", "postback-router-dispatcher")
    pod = dispatcher["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secret_volumes = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert set(secret_volumes.values()) == {"postback-router-platforms", "postback-router-kafka"}
    (secrets_dir,) = [e["value"] for e in container["env"] if e["name"] == "POSTBACK_SECRETS_DIR"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in secret_volumes}
    assert mounts[secrets_dir]["readOnly"] is True


KAFKA_SECRETS_DIR = "/run/secrets/kafka"


def test_every_deployment_mounts_the_kafka_secret_read_only() -> None:
    for deployment in _deployments():
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == KAFKA_SECRETS_DIR]
        assert mount["readOnly"] is True, name
        secret = volumes[mount["name"]]
        # optional: a PLAINTEXT cluster needs no such Secret, and its pods must still start
        assert (secret["secretName"], secret["optional"]) == ("postback-router-kafka", True), name


def test_the_configmaps_kafka_security_example_is_valid_with_the_secrets_files(tmp_path: Path) -> None:
    """The commented SASL_SSL / mutual TLS settings, uncommented, with the Secret's files where they are mounted."""
    from tests.tls_certificates import make_ca, make_leaf

    text = (KUBERNETES / "configmap.yaml").read_text()
    example = dict(re.findall(r'^  # (KAFKA_[A-Z_]+): "([^"]*)"', text, re.MULTILINE))
    assert example["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    ca = make_ca(tmp_path, "ca")
    user = make_leaf(ca, tmp_path, "user", client=True)
    files = {"sasl-password": b"from-the-secret\n", "ca.crt": ca.cert.read_bytes()}
    files |= {"user.crt": user.cert.read_bytes(), "user.key": user.key.read_bytes()}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    env = {**_config_data(), **{k: v.replace(KAFKA_SECRETS_DIR, str(tmp_path)) for k, v in example.items()}}
    mounted = {v for k, v in example.items() if k.endswith("FILE")}
    assert mounted == {f"{KAFKA_SECRETS_DIR}/{name}" for name in files}
    security = load_settings(env).kafka_security
    assert (security.protocol, security.sasl_mechanism, security.sasl_password) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "from-the-secret",
    )
    assert load_settings(_config_data()).kafka_security.protocol == "PLAINTEXT"  # as shipped


# --- docker compose ------------------------------------------------------------------------------


def test_compose_runs_kafka_in_kraft_mode() -> None:
    services = _compose()["services"]
    kafka = services["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka['KAFKA_NODE_ID']}@kafka:")
    assert "CONTROLLER" in kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert kafka["CLUSTER_ID"]
    assert not [name for name in services if "zookeeper" in name]
    assert not [key for key in kafka if "ZOOKEEPER" in key]


def test_compose_has_every_process_prometheus_and_grafana() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"kafka", "worker", "dispatcher", "api", "prometheus", "grafana"} <= set(services)
    assert services["worker"]["command"] == ["worker"]
    assert services["dispatcher"]["command"][0] == "dispatch"
    assert services["api"]["command"] == ["api"]
    for name in ("topics", "worker", "dispatcher", "api"):
        service = services[name]
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}, name
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILE
        env = service["environment"]
        host, port = env["KAFKA_BOOTSTRAP_SERVERS"].split(":")
        assert host in services and f"PLAINTEXT://{host}:{port}" in services["kafka"]["environment"][
            "KAFKA_ADVERTISED_LISTENERS"
        ].split(","), name
    for name in ("worker", "dispatcher", "api"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_compose_bind_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    assert (DEPLOY / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()[-2:] == ["*", "!.gitignore"]


def _interpolate(value: str) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?message} with every variable set to a test value."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?[-?][^}]*)?\}", "x" * 32, value)


def test_compose_secrets_come_from_the_environment() -> None:
    for name, service in _compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)?\}", str(value)), (
                    f"{name}: {key} must come from the environment (${{{key}:?...}}), not a value in the file"
                )
    assert _compose()["services"]["api"]["environment"]["API_TOKEN"].startswith("${API_TOKEN:?")


def test_compose_settings_are_valid_for_the_service() -> None:
    for name in ("topics", "worker", "dispatcher", "api"):
        env = {key: _interpolate(str(value)) for key, value in _compose()["services"][name]["environment"].items()}
        settings = load_settings(env)
        assert settings.bootstrap_servers == "kafka:9092", name


# --- Dockerfile ----------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_is_multi_stage_and_runs_as_non_root() -> None:
    instructions = _dockerfile_instructions()
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) >= 2, "not multi-stage"
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in stages)
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text(encoding="utf-8")
    last_from = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    final = instructions[last_from:]
    assert any(k == "COPY" and r.startswith("--from=builder /opt/venv") for k, r in final), "venv not copied"
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the final stage must switch to a non-root USER"
    assert int(users[-1].split(":")[0]) == 10001
    entrypoint = [json.loads(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint == [["postback-router"]]
    env = " ".join(rest for keyword, rest in final if keyword == "ENV")
    assert "STATE_DIR=/var/lib/postback-router" in env and "HTTP_PORT=8080" in env
    assert ("EXPOSE", "8080") in final
    assert any(k == "RUN" and "pip wheel" in r for k, r in instructions), "the builder should build wheels"


def test_dockerfile_copies_what_the_wheel_is_built_from() -> None:
    sources: set[str] = set()
    for keyword, rest in _dockerfile_instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            sources.update(part.rstrip("/") for part in rest.split()[:-1])
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the build context"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert ignore[ignore.index("*") :].count("*") == 1, "the dockerignore should exclude everything first"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert sources <= allowed, f"COPY of files the dockerignore excludes: {sorted(sources - allowed)}"
    # What setuptools needs: pyproject's readme and every package it is told to find.
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["readme"] in sources
    assert "postback-router" in project["project"]["scripts"]
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert pattern.rstrip("*") in sources, f"package {pattern} is not copied into the build"
