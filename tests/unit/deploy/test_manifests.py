"""The deploy/ manifests are valid without Docker or a cluster.

- every YAML file parses;
- deploy/compose.yaml validates against the Compose Specification schema (vendored in
  deploy/schemas/) and its services, order, images and environment are consistent;
- deploy/Dockerfile builds the package and runs ``loopwise worker``;
- deploy/k8s/*.yaml validate against the Kubernetes OpenAPI-derived JSON schemas shipped in
  the ``kubernetes-validate`` package (strict: unknown fields fail), and their env names,
  probes, ports, selectors, images and commands agree with each other and with the code;
- the environment given to the worker in compose and Kubernetes is a valid configuration
  for :class:`Settings` and :class:`SecuritySettings`;
- Prometheus rules are structurally valid and every metric in an expression, like every
  metric of a Grafana panel, is exported by streams/metrics.py, is standard, or is one of
  the explicitly listed PLACEHOLDER_METRICS.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from loopwise.cli.main import build_parser
from streams.config import Settings, settings_table
from streams.metrics import REGISTRY
from streams.security import SECURITY_ENV_NAMES, SecuritySettings

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
RULES = DEPLOY / "prometheus" / "rules.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"

# Metrics that panels and alerts use before the code exports them; each is named in
# docs/deploy.md and its panels are titled "(placeholder)". Remove a name once it exists.
PLACEHOLDER_METRICS: dict[str, str] = {}
# Series every Prometheus has for a scrape target.
STANDARD_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# The metrics of streams/metrics.py when this dashboard was written: each needs a panel.
DASHBOARD_MUST_SHOW = {
    "loopwise_events_in_total",
    "loopwise_events_valid_total",
    "loopwise_events_duplicate_total",
    "loopwise_events_out_total",
    "loopwise_dead_letters_total",
    "loopwise_batch_size_bucket",
    "loopwise_batch_processing_seconds_bucket",
    "loopwise_event_to_output_seconds_bucket",
    "loopwise_sink_retries_total",
    "loopwise_sink_writes_total",
    "loopwise_table_keys",
    "loopwise_agent_errors_total",
    "loopwise_experiments_active",
    "loopwise_experiment_exposures_total",
}
REQUIRED_ALERTS = {
    "LoopwiseWorkerDown",
    "LoopwiseWorkersMissing",
    "LoopwiseConsumerLagHigh",
    "LoopwiseDeadLetterRateHigh",
    "LoopwiseSinkRetriesGrowing",
}
# Kubernetes versions the manifests must be valid for: the oldest supported here and the
# newest the kubernetes-validate package knows.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
WORKER_JOB = "loopwise-worker"

KNOWN_ENV = {env for env, _, _ in settings_table()} | SECURITY_ENV_NAMES


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in _k8s_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
        for _, d in _k8s_docs()
        if d["kind"] in {"Deployment", "StatefulSet", "Job", "DaemonSet"}
    ]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _k8s_env() -> dict[str, str]:
    """What a worker pod sees: the ConfigMap plus the Secret template."""
    config = _k8s("ConfigMap", "loopwise-config")["data"]
    secret = _k8s("Secret", "loopwise-secrets")["stringData"]
    return {**{k: str(v) for k, v in config.items()}, **{k: str(v) for k, v in secret.items()}}


def _compose() -> dict[str, Any]:
    return _load(COMPOSE)


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            rows.append((instruction.upper(), " ".join(rest.split())))
    return rows


# --- PromQL metric names --------------------------------------------------------------------

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
    "and", "or", "unless", "atan2", "inf", "nan", "start", "end",
}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (or a Grafana ``label_values(...)`` query)."""
    values = re.fullmatch(r"\s*label_values\(\s*(.*?)\s*,\s*\w+\s*\)\s*", expr, re.S)
    if values:
        expr = values.group(1)
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for match in re.finditer(r"(?<![\w.$:])[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        if s[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation operator
        if match.group(0) not in _PROMQL_WORDS:
            names.add(match.group(0))
    return names


def _balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in re.sub(r'"(?:\\.|[^"\\])*"', "", expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def exported_series() -> set[str]:
    """Every series name the worker's registry can export, with the type suffixes."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created"),
        "gauge": (),
    }
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_promql_metric_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, agent) (rate(a_bucket{job=~"$job"}[$__rate_interval'
        "]))) / clamp_min(sum without (x) (b_total offset 5m), 1e-9) > bool 2 unless on (t) c"
    )
    assert promql_metrics(expr) == {"a_bucket", "b_total", "c"}
    assert promql_metrics('label_values(up{job=~"$job"}, instance)') == {"up"}
    assert promql_metrics("label_values(m_total, agent)") == {"m_total"}
    assert not _balanced("sum(rate(x[5m])")


def test_exported_series_include_type_suffixes() -> None:
    series = exported_series()
    assert {"loopwise_events_in_total", "loopwise_batch_size_bucket"} <= series
    assert "process_cpu_seconds_total" in series and "up" not in series
    assert not set(PLACEHOLDER_METRICS) & series, (
        "a placeholder metric exists now: remove it from PLACEHOLDER_METRICS, drop "
        "'(placeholder)' from its Grafana panels and the placeholder notes in rules.yaml "
        "and docs/deploy.md"
    )


# --- every YAML file ------------------------------------------------------------------------


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_the_expected_files_exist() -> None:
    for path in (COMPOSE, DOCKERFILE, RULES, PROMETHEUS, DASHBOARD):
        assert path.is_file(), path
    kinds = {d["kind"] for _, d in _k8s_docs()}
    assert {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Job",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    } <= kinds


# --- docker compose -------------------------------------------------------------------------


def _compose_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_compose_validates_against_the_compose_spec() -> None:
    errors = sorted(_compose_validator().iter_errors(_compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_schema_rejects_mistakes() -> None:
    """The schema is strict enough to catch a misplaced key or a wrong type."""
    validator = _compose_validator()
    bad = _compose()
    bad["services"]["worker"]["replicas"] = 3  # belongs under deploy:
    assert list(validator.iter_errors(bad))
    bad = _compose()
    bad["services"]["worker"]["depends_on"]["topics"]["condition"] = "finished"
    assert list(validator.iter_errors(bad))


def test_compose_services_start_in_order() -> None:
    services = _compose()["services"]
    assert {
        "kafka", "redis", "postgres", "migrate", "topics", "worker", "prometheus", "grafana"
    } <= set(services)  # fmt: skip
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    kafka_env = services["kafka"]["environment"]
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in kafka_env)

    worker_deps = services["worker"]["depends_on"]
    assert worker_deps["topics"]["condition"] == "service_completed_successfully"
    assert worker_deps["migrate"]["condition"] == "service_completed_successfully"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("kafka", "redis", "postgres"):
        assert "healthcheck" in services[name], name

    # migrate runs the repository's migration script over the repository's migrations
    assert services["migrate"]["entrypoint"][-1] == "/deploy/local/migrate.sh"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in services["migrate"]["volumes"]}
    assert (DEPLOY / mounts["/deploy/local"] / "migrate.sh").is_file()
    assert list((DEPLOY / mounts["/deploy/migrations"]).glob("*.sql"))


def test_compose_worker_scales() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    assert "ports" not in worker, "a published port cannot be shared by scaled replicas"
    assert "container_name" not in worker, "a fixed container name prevents --scale"
    replicas = worker["deploy"]["replicas"]
    env = worker["environment"]
    assert int(env["LOOPWISE_PARTITIONS"]) % replicas == 0
    assert int(env["LOOPWISE_PARTITIONS"]) % int(env["LOOPWISE_EXPECTED_WORKERS"]) == 0


def test_compose_bind_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
        build = service.get("build")
        if build:
            context = DEPLOY / build["context"]
            assert (context / build["dockerfile"]).resolve() == DOCKERFILE.resolve()


def test_compose_images_and_commands() -> None:
    services = _compose()["services"]
    worker, topics = services["worker"], services["topics"]
    assert worker["image"] == topics["image"] and worker["build"] == topics["build"]
    parser = build_parser()
    assert worker["command"] == ["worker"]
    assert topics["command"] == ["topics", "create"]
    for command in (worker["command"], topics["command"]):
        assert parser.parse_args(command).func  # a real `loopwise` subcommand


def test_compose_worker_environment_is_a_valid_configuration() -> None:
    services = _compose()["services"]
    env = {k: str(v) for k, v in services["worker"]["environment"].items()}
    assert set(env) <= KNOWN_ENV, f"unknown variables: {set(env) - KNOWN_ENV}"
    assert env == {k: str(v) for k, v in services["topics"]["environment"].items()}
    settings = Settings.from_env(env)
    SecuritySettings.from_env(env)
    assert settings.web_host == "0.0.0.0"

    bootstrap = urlsplit(f"//{settings.kafka_bootstrap_servers}")
    assert bootstrap.hostname == "kafka"
    kafka_env = services["kafka"]["environment"]
    assert f"PLAINTEXT://kafka:{bootstrap.port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert urlsplit(settings.redis_url).hostname == "redis"

    db = urlsplit(settings.database_url)
    pg = services["postgres"]["environment"]
    assert (db.hostname, db.username, db.password, db.path.lstrip("/")) == (
        "postgres",
        pg["POSTGRES_USER"],
        pg["POSTGRES_PASSWORD"],
        pg["POSTGRES_DB"],
    )
    assert services["migrate"]["environment"]["DATABASE_URL"] == settings.database_url

    health = " ".join(services["worker"]["healthcheck"]["test"])
    assert f":{settings.web_port}/health" in health
    assert str(settings.web_port) in [str(p) for p in services["worker"]["expose"]]


def test_compose_mounts_prometheus_and_grafana_files() -> None:
    services = _compose()["services"]
    prom = {m.split(":")[1]: m.split(":")[0] for m in services["prometheus"]["volumes"]}
    rule_files = _load(PROMETHEUS)["rule_files"]
    for target in rule_files:
        assert (DEPLOY / prom[target]).resolve() == RULES.resolve()
    config_flag = next(a for a in services["prometheus"]["command"] if "config.file" in a)
    assert (DEPLOY / prom[config_flag.split("=", 1)[1]]).resolve() == PROMETHEUS.resolve()

    grafana = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"]}
    assert (DEPLOY / grafana["/etc/grafana/provisioning"]).resolve() == GRAFANA_PROVISIONING
    provider = _load(GRAFANA_PROVISIONING / "dashboards" / "loopwise.yaml")["providers"][0]
    mounted = [t for t, s in grafana.items() if (DEPLOY / s).resolve() == DASHBOARD.resolve()]
    assert mounted and Path(mounted[0]).parent == Path(provider["options"]["path"])


# --- Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_builds_the_package_and_runs_the_worker() -> None:
    rows = _dockerfile()
    assert rows[0] == ("FROM", "python:3.11-slim")
    assert any(i == "RUN" and re.search(r"\bpip install \.(\s|$)", a) for i, a in rows)
    entrypoint = json.loads(next(a for i, a in rows if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in rows if i == "CMD"))
    assert entrypoint + cmd == ["loopwise", "worker"]

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["loopwise"] == "loopwise.cli.main:main"
    copied = {src for i, a in rows if i == "COPY" for src in a.split()[:-1]}
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {pyproject["project"]["readme"], "pyproject.toml"} <= copied

    env = dict(
        pair.split("=", 1) for i, a in rows if i == "ENV" for pair in a.split() if "=" in pair
    )
    loopwise_env = {k: v for k, v in env.items() if k.startswith("LOOPWISE_")}
    assert set(loopwise_env) <= KNOWN_ENV
    settings = Settings.from_env(loopwise_env)
    exposed = [a for i, a in rows if i == "EXPOSE"]
    assert exposed == [str(settings.web_port)]


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "doc"), _k8s_docs(), ids=[f"{n}:{d['kind']}" for n, d in _k8s_docs()]
)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifest_matches_schema(name: str, doc: dict[str, Any], version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{name} {doc['kind']} invalid for Kubernetes {version}: {path}: {exc.message}")


def test_kubernetes_metadata_and_namespace() -> None:
    for name, doc in _k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind"), name
        meta = doc["metadata"]
        assert meta.get("name"), name
        if doc["kind"] != "Namespace":
            assert meta.get("namespace") == "loopwise", f"{name}: namespace"
    assert _k8s("Namespace")["metadata"]["name"] == "loopwise"


def test_kubernetes_selectors_match_the_worker_pods() -> None:
    deployment = _k8s("Deployment", "loopwise-worker")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert _k8s("Service")["spec"]["selector"] == selector
    assert _k8s("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert all(c["labelSelector"]["matchLabels"] == selector for c in spread)


def test_kubernetes_env_names_are_real_settings() -> None:
    config_names = {d["metadata"]["name"] for _, d in _k8s_docs() if d["kind"] == "ConfigMap"}
    secret_names = {d["metadata"]["name"] for _, d in _k8s_docs() if d["kind"] == "Secret"}
    env = _k8s_env()
    assert set(env) <= KNOWN_ENV, f"unknown variables: {set(env) - KNOWN_ENV}"
    for owner, spec in _pod_specs():
        for container in _containers(spec):
            names = {e["name"] for e in container.get("env", [])}
            assert names <= KNOWN_ENV, f"{owner}/{container['name']}: {names - KNOWN_ENV}"
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in config_names
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secret_names


def test_kubernetes_configuration_is_valid_and_planned_for_the_replicas() -> None:
    env = _k8s_env()
    settings = Settings.from_env(env)
    SecuritySettings.from_env(env)
    replicas = _k8s("Deployment", "loopwise-worker")["spec"]["replicas"]
    assert settings.expected_workers == replicas
    assert settings.partitions % replicas == 0
    assert settings.web_host == "0.0.0.0"

    hpa = _k8s("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "loopwise-worker")
    assert 1 <= hpa["spec"]["minReplicas"] <= replicas <= hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["maxReplicas"] <= settings.partitions, "workers beyond partitions idle"


def test_kubernetes_probes_and_ports() -> None:
    settings = Settings.from_env(_k8s_env())
    deployment = _k8s("Deployment", "loopwise-worker")
    pod = deployment["spec"]["template"]
    (worker,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"http": settings.web_port}

    def resolved(port: int | str) -> int:
        return ports[port] if isinstance(port, str) else port

    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert resolved(worker[probe]["httpGet"]["port"]) == settings.web_port, probe

    (service_port,) = _k8s("Service")["spec"]["ports"]
    assert resolved(service_port["targetPort"]) == settings.web_port
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.web_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_kubernetes_images_and_commands_are_consistent() -> None:
    parser = build_parser()
    images = set()
    commands = {}
    for owner, spec in _pod_specs():
        for container in _containers(spec):
            images.add(container["image"])
            assert "command" not in container, "keep the image's ENTRYPOINT (loopwise)"
            commands[(owner, container["name"])] = container["args"]
            assert parser.parse_args(container["args"]).func
    assert len(images) == 1, images
    assert commands[("Deployment/loopwise-worker", "worker")] == ["worker"]
    assert commands[("Job/loopwise-topics", "topics")] == ["topics", "create"]

    compose_image = _compose()["services"]["worker"]["image"]
    assert images == {compose_image}
    kustomization = _load(K8S / "kustomization.yaml")
    assert {i["name"] for i in kustomization["images"]} == {compose_image.split(":")[0]}


def test_kubernetes_pods_run_unprivileged_as_the_image_user() -> None:
    uid = int(re.search(r"--uid (\d+)", DOCKERFILE.read_text()).group(1))
    for owner, spec in _pod_specs():
        assert spec["securityContext"]["runAsNonRoot"] is True, owner
        assert spec["securityContext"]["runAsUser"] == uid, owner
        for container in _containers(spec):
            ctx = container["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, owner
            assert ctx["readOnlyRootFilesystem"] is True, owner
            assert ctx["capabilities"]["drop"] == ["ALL"], owner


def test_kustomization_lists_the_manifests() -> None:
    kustomization = _load(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    for resource in listed:
        assert (K8S / resource).is_file(), resource
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert on_disk - listed == {"secret-template.yaml", "hpa.yaml"}
    assert kustomization["namespace"] == "loopwise"


# --- Prometheus -----------------------------------------------------------------------------


def _rules() -> list[tuple[str, dict[str, Any]]]:
    return [(g["name"], r) for g in _load(RULES)["groups"] for r in g["rules"]]


def test_prometheus_config_scrapes_the_workers() -> None:
    config = _load(PROMETHEUS)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    worker = jobs[WORKER_JOB]
    assert worker["metrics_path"] == "/metrics"
    (sd,) = worker["dns_sd_configs"]
    assert sd["names"] == ["worker"] and "worker" in _compose()["services"]
    env = _compose()["services"]["worker"]["environment"]
    assert sd["port"] == int(env["LOOPWISE_WEB_PORT"])


def test_prometheus_rules_structure() -> None:
    groups = _load(RULES)["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = [r["alert"] for _, r in _rules()]
    assert len(set(alerts)) == len(alerts), "duplicate alert names"
    assert set(alerts) >= REQUIRED_ALERTS
    for group, rule in _rules():
        where = f"{group}/{rule.get('alert')}"
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), where
        assert _balanced(rule["expr"]), f"{where}: unbalanced brackets"
        assert re.fullmatch(r"\d+[smhdwy]", rule["for"]), f"{where}: for={rule['for']!r}"
        assert rule["labels"]["severity"] in {"warning", "critical"}, where
        assert {"summary", "description"} <= set(rule["annotations"]), where
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job == WORKER_JOB, f"{where}: job {job} is not scraped"


@pytest.mark.parametrize("rule", [r for _, r in _rules()], ids=lambda r: r["alert"])
def test_prometheus_rule_metrics_exist(rule: dict[str, Any]) -> None:
    names = promql_metrics(rule["expr"])
    assert names, rule["expr"]
    unknown = names - exported_series() - STANDARD_METRICS - set(PLACEHOLDER_METRICS)
    assert not unknown, f"{rule['alert']}: no such metric {unknown}"


# --- Grafana --------------------------------------------------------------------------------


def _panels() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    flat = []
    for panel in dashboard["panels"]:
        flat.append(panel)
        flat.extend(panel.get("panels", []))
    return flat


def test_grafana_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    panels = _panels()
    ids = [p["id"] for p in panels]
    assert len(set(ids)) == len(ids), "duplicate panel ids"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        assert all(t["expr"].strip() and _balanced(t["expr"]) for t in panel["targets"])

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance", "agent"} <= set(variables)
    datasource = _load(GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml")["datasources"][0]
    assert variables["datasource"]["current"]["value"] == datasource["uid"]
    assert datasource["type"] == "prometheus"
    assert variables["job"]["current"]["value"] == WORKER_JOB
    for name in ("job", "instance", "agent"):
        query = variables[name]["query"]["query"]
        unknown = promql_metrics(query) - exported_series() - STANDARD_METRICS
        assert not unknown, f"variable {name}: {unknown}"


@pytest.mark.parametrize(
    "panel", [p for p in _panels() if p["type"] != "row"], ids=lambda p: p["title"]
)
def test_grafana_panel_metrics_exist(panel: dict[str, Any]) -> None:
    names = set().union(*(promql_metrics(t["expr"]) for t in panel["targets"]))
    assert names
    placeholders = names & set(PLACEHOLDER_METRICS)
    unknown = names - exported_series() - STANDARD_METRICS - set(PLACEHOLDER_METRICS)
    assert not unknown, f"{panel['title']}: no such metric {unknown}"
    is_marked = "(placeholder)" in panel["title"] and "PLACEHOLDER" in panel["description"]
    assert is_marked == bool(placeholders), (
        f"{panel['title']}: a panel is titled '(placeholder)' exactly when it uses one"
    )


def test_grafana_dashboard_covers_the_metrics_and_the_placeholders() -> None:
    shown = set().union(
        *(promql_metrics(t["expr"]) for p in _panels() if p["type"] != "row" for t in p["targets"])
    )
    assert not DASHBOARD_MUST_SHOW - shown, f"no panel for {DASHBOARD_MUST_SHOW - shown}"
    assert not set(PLACEHOLDER_METRICS) - shown


def test_placeholders_are_documented() -> None:
    docs = (REPO / "docs" / "deploy.md").read_text()
    for name in PLACEHOLDER_METRICS:
        assert f"`{name}`" in docs, f"docs/deploy.md does not list the placeholder {name}"
