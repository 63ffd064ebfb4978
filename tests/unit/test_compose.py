"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

What a typo would break at ``docker compose up``: a service without image or build, a mounted
file missing from the repository, two services on one host port, Prometheus scraping a host or
port no service has, a ``DELIVERY_MONITOR_`` variable the monitor never reads, a command the
CLI does not know, a Dockerfile COPY of a path that does not exist.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streams.cli import build_parser
from streams.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCES = REPO / "dashboards" / "provisioning" / "datasources.yml"
MONITOR_SERVICES = ("worker", "ingress", "demo")  # services running the monitor's image


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict) and found
    return found


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def bind_mounts(service: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(host path, container path) of every bind mount (named volumes are skipped)."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, target = str(volume).split(":")[:2]
        if source.startswith((".", "/")):
            yield source, target


def container_ports(service: Mapping[str, Any]) -> set[int]:
    """Ports a service listens on inside the network: published ones and the monitor's."""
    ports = {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports") or []}
    env = environment(service)
    for name in ("WEB_PORT", "INGRESS_PORT"):
        if ENV_PREFIX + name in env:
            ports.add(int(env[ENV_PREFIX + name]))
    return ports


class RecordingEnv(dict[str, str]):
    """An empty environment that records every name ``Settings.from_env`` asks for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return default


def settings_names() -> set[str]:
    env = RecordingEnv()
    Settings.from_env(env)
    return env.asked


def test_every_service_has_an_image_or_a_build(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name


def test_the_expected_services_are_there_and_the_demo_is_an_optional_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    expected = {"kafka", "worker", "ingress", "prometheus", "alertmanager", "grafana", "demo"}
    assert expected <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["demo"].get("profiles") == ["demo"]
    for name in expected - {"demo"}:
        assert not services[name].get("profiles"), f"{name} must start by default"


def test_files_mounted_into_containers_exist_in_the_repository(
    services: dict[str, dict[str, Any]],
) -> None:
    mounts = [(name, src) for name, s in services.items() for src, _ in bind_mounts(s)]
    assert mounts, "the stack mounts the project's Prometheus, Alertmanager and Grafana files"
    for name, source in mounts:
        assert not source.startswith("/"), f"{name}: {source} is outside the repository"
        assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_the_monitoring_services_mount_the_project_configuration(
    services: dict[str, dict[str, Any]],
) -> None:
    def mounted(service: str) -> dict[str, str]:
        return {str(Path(src)): dst for src, dst in bind_mounts(services[service])}

    prometheus = mounted("prometheus")
    assert prometheus["deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert "deploy/prometheus/rules.yml" in prometheus
    assert mounted("alertmanager")["deploy/alertmanager/alertmanager.yml"] == (
        "/etc/alertmanager/alertmanager.yml"
    )
    grafana = mounted("grafana")
    assert grafana["dashboards/provisioning/datasources.yml"].startswith(
        "/etc/grafana/provisioning/datasources/"
    )
    assert grafana["dashboards/provisioning/dashboards.yml"].startswith(
        "/etc/grafana/provisioning/dashboards/"
    )
    provider = yaml.safe_load((REPO / "dashboards/provisioning/dashboards.yml").read_text())
    paths = {p["options"]["path"] for p in provider["providers"]}
    assert paths <= set(grafana.values()), f"Grafana reads dashboards from {paths}"


def test_published_host_ports_do_not_clash(services: dict[str, dict[str, Any]]) -> None:
    published = Counter(
        str(port).rsplit(":", 1)[0]
        for service in services.values()
        for port in service.get("ports") or []
        if ":" in str(port)
    )
    assert published and all(n == 1 for n in published.values()), published


def test_depends_on_configs_and_secrets_name_things_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert set(service.get("depends_on") or []) <= set(services), name
        for kind in ("configs", "secrets"):
            declared = set(compose.get(kind) or {})
            for item in service.get(kind) or []:
                source = item["source"] if isinstance(item, dict) else item
                assert source in declared, f"{name} uses an undeclared {kind} entry {source}"


def test_alertmanager_gets_the_slack_url_file_its_configuration_names(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load((REPO / "deploy/alertmanager/alertmanager.yml").read_text())
    files = {
        slack["api_url_file"]
        for receiver in config["receivers"]
        for slack in receiver.get("slack_configs", [])
        if "api_url_file" in slack
    }
    provided = {c["target"] for c in services["alertmanager"].get("configs", [])}
    provided |= {dst for _, dst in bind_mounts(services["alertmanager"])}
    assert files <= provided, files - provided


def test_prometheus_scrapes_compose_services_on_their_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    """Every scrape target and the Alertmanager address are ``<service>:<port it listens on>``
    (``localhost`` inside the Prometheus container is Prometheus itself)."""
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS.relative_to(REPO)} is not in the repository yet")
    config = yaml.safe_load(PROMETHEUS.read_text())
    targets = [
        (job["job_name"], target)
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    targets += [
        ("alerting", target)
        for am in config.get("alerting", {}).get("alertmanagers", [])
        for static in am.get("static_configs", [])
        for target in static["targets"]
    ]
    assert any(job == "alerting" for job, _ in targets), "Prometheus must send to Alertmanager"
    scraped = set()
    for job, target in targets:
        host, _, port = target.rpartition(":")
        assert host in services, (
            f"{job}: target {target} is not a compose service (inside the Prometheus container "
            f"localhost is Prometheus itself): scrape the service name, e.g. worker:6066"
        )
        assert int(port) in container_ports(services[host]), f"{job}: {host} is not on {port}"
        scraped.add(host)
    assert {"worker", "ingress", "alertmanager"} <= scraped
    rule_dir = Path("/etc/prometheus")
    mounted = {dst for _, dst in bind_mounts(services["prometheus"])}
    for rule_file in config.get("rule_files", []):
        assert str(rule_dir / rule_file) in mounted, f"rule file {rule_file} is not mounted"


def test_grafana_datasource_points_at_the_prometheus_service(
    services: dict[str, dict[str, Any]],
) -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    for source in datasources:
        url = urlsplit(source["url"])
        assert url.hostname in services, (
            f"datasource {source['name']}: {source['url']} is not a compose service (inside the "
            "Grafana container localhost is Grafana itself): use http://prometheus:9090"
        )
        assert url.port in container_ports(services[url.hostname])


def test_monitor_variables_in_compose_are_real_settings(services: dict[str, Any]) -> None:
    known = settings_names()
    text = COMPOSE.read_text()
    used = set(re.findall(r"\b(?:DELIVERY_MONITOR_[A-Z_]+|KAFKA_BOOTSTRAP_SERVERS)\b", text))
    used |= {k for s in services.values() for k in environment(s) if k.startswith(ENV_PREFIX)}
    assert used, "compose configures the monitor through its settings"
    assert used - {"KAFKA_BOOTSTRAP_SERVERS"} <= known, sorted(used - known)
    for name in MONITOR_SERVICES:
        assert environment(services[name])["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"


def test_monitor_services_run_commands_the_cli_knows(services: dict[str, Any]) -> None:
    parser = build_parser()
    for name in MONITOR_SERVICES:
        command = services[name]["command"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        args = parser.parse_args(argv)  # exits (SystemExit) on an unknown command or option
        assert args.command == name


def test_dockerfile_builds_the_package_as_a_non_root_user() -> None:
    lines = [
        line.strip()
        for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    copies = [line.split()[1:] for line in lines if line.startswith("COPY ")]
    assert copies
    ignored = {
        line.strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    assert any(re.match(r"RUN pip install \.", line) for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["delivery-monitor"]' in lines


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """``docker compose config`` parses and interpolates the file (client only, no engine)."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "--profile", "demo", "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "ALERTMANAGER_SLACK_WEBHOOK_URL": "x"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
