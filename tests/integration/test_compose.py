"""infra/docker-compose.yml, the native harness and the Kubernetes GPU job template agree with infra/topology.yaml.

Fast and server-free: it parses the files and builds the native commands/environments without starting them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.integration.services import ROOT, Topology, load_topology, native_argv

INFRA = ROOT / "infra"
TOPOLOGY = load_topology()
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text())
SERVICES = sorted(TOPOLOGY["services"])


def container_ports(service: dict) -> list[int]:
    return [int(str(mapping).rsplit(":", 1)[-1]) for mapping in service.get("ports", [])]


def test_compose_has_exactly_the_services_of_the_topology():
    assert sorted(COMPOSE["services"]) == SERVICES


@pytest.mark.parametrize("name", SERVICES)
def test_each_compose_service_matches_the_topology(name):
    spec, service = TOPOLOGY["services"][name], COMPOSE["services"][name]
    assert service["image"] == spec["image"]
    if "command" in spec:
        assert service["command"] == spec["command"]
    assert sorted(service.get("environment", {})) == sorted(spec.get("environment", []))
    assert container_ports(service) == ([spec["port"]] if "port" in spec else [])
    assert service.get("volumes", []) == spec.get("volumes", [])
    assert sorted(service.get("depends_on", {})) == sorted(spec.get("depends_on", []))
    if "port" in spec:  # every long-running server says when it is ready
        assert service["healthcheck"]["test"]


def test_servers_listen_on_the_topology_port_through_their_environment():
    services = COMPOSE["services"]
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_PORT"] == str(
        TOPOLOGY["services"]["prefect-server"]["port"]
    )
    assert services["mlflow-server"]["environment"]["MLFLOW_PORT"] == str(TOPOLOGY["services"]["mlflow-server"]["port"])
    assert f":{TOPOLOGY['services']['object-store']['port']}" in services["object-store"]["command"]


def test_the_native_harness_runs_the_same_commands_and_environment_names():
    native = Topology(Path("/nonexistent"), {name: 1000 + i for i, name in enumerate(SERVICES)})
    for name in SERVICES:
        spec = TOPOLOGY["services"][name]
        env = native.service_env(name)
        assert set(spec.get("environment", [])) <= set(env), name
        if "command" in spec and "native_command" not in spec:
            argv = native_argv(spec, 0)
            assert [Path(argv[0]).name, *argv[1:]] == spec["command"], name
        if "native_command" in spec or "command" not in spec:
            assert spec.get("native"), f"{name}: say why it runs differently here"


def test_the_buckets_and_databases_are_created_in_compose_too():
    create = " ".join(COMPOSE["services"]["create-buckets"]["command"])
    assert all(f"store/{bucket}" in create for bucket in TOPOLOGY["buckets"])
    init = (INFRA / "postgres" / "init-databases.sh").read_text()
    assert COMPOSE["services"]["postgres"]["environment"]["POSTGRES_DB"] == TOPOLOGY["databases"][0]
    assert all(f"CREATE DATABASE {db}" in init for db in TOPOLOGY["databases"][1:])


def test_the_gpu_worker_gets_the_nvidia_runtime_and_a_gpu():
    gpu = COMPOSE["services"]["gpu-worker"]
    assert gpu["runtime"] == "nvidia"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert TOPOLOGY["services"]["gpu-worker"]["gpu"] is True


def test_named_volumes_are_declared():
    used = {
        v.split(":")[0] for s in COMPOSE["services"].values() for v in s.get("volumes", []) if not v.startswith(".")
    }
    assert used == set(COMPOSE["volumes"])


def test_no_secret_is_committed():
    secret_names = re.compile(r"PASSWORD|SECRET|ACCESS_KEY")
    for name, service in COMPOSE["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret_names.search(key):
                assert str(value).startswith("${"), f"{name}.{key} must come from infra/.env"
    for line in (INFRA / ".env.example").read_text().splitlines():
        key, _, value = line.partition("=")
        if secret_names.search(key) and not line.startswith("#"):
            assert value == "", f".env.example sets {key}"
    assert "infra/.env" in (ROOT / ".gitignore").read_text()


def test_the_gpu_job_template_requests_nvidia_gpus_and_defines_every_placeholder():
    template = json.loads((INFRA / "k8s" / "gpu-base-job-template.json").read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert template["variables"]["properties"]["gpu_count"]["default"] >= 1
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(template["job_configuration"])))
    assert placeholders <= set(template["variables"]["properties"])
    values = yaml.safe_load((INFRA / "k8s" / "prefect-worker-gpu.values.yaml").read_text())
    assert values["worker"]["config"]["workPool"] == "gpu"
