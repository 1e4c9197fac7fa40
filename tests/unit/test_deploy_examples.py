"""deploy/kubernetes/ validates against the Kubernetes schemas offline, strictly (unknown fields
are errors), and agrees with itself; the compose example runs three relays on one Valkey."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"


def documents() -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) for every document in deploy/kubernetes/."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def resource(kind: str, name: str) -> dict[str, Any]:
    """The resource of ``kind`` called ``name``."""
    for _, doc in documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind}/{name}")


@pytest.mark.parametrize(("file", "doc"), documents(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_is_valid_kubernetes(file: str, doc: dict[str, Any]) -> None:
    """Each resource passes strict schema validation (bundled schemas, no network, no cluster)."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validator_rejects_a_broken_manifest() -> None:
    """The check can fail: a wrong type and an unknown field are reported."""
    broken = copy.deepcopy(resource("Deployment", "xoauth2-relay"))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    unknown = copy.deepcopy(resource("Deployment", "xoauth2-relay"))
    unknown["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


def test_deployment_agrees_with_its_config_and_budget() -> None:
    """Several replicas on the Redis store; every ${file:} the config uses is mounted; the listen
    ports are the container ports; probes set; the PDB leaves a replica to drain."""
    config = yaml.safe_load(resource("ConfigMap", "xoauth2-relay")["data"]["relay.yaml"])
    deployment = resource("Deployment", "xoauth2-relay")
    pod = deployment["spec"]["template"]["spec"]
    relay = pod["containers"][0]
    assert deployment["spec"]["replicas"] >= 2 and config["token_store"]["backend"] == "redis"
    mounts = [m["mountPath"] for m in relay["volumeMounts"]]
    text = resource("ConfigMap", "xoauth2-relay")["data"]["relay.yaml"]
    for ref in re.findall(r"\$\{file:([^}]+)\}", text):
        assert any(ref.startswith(m + "/") for m in mounts), ref
    assert {p["containerPort"] for p in relay["ports"]} == {config["listen"]["smtp"]["port"],
                                                           config["listen"]["pop3"]["port"]}
    assert relay["readinessProbe"] and relay["livenessProbe"]
    assert [e["name"] for e in relay["env"]] == [config["token_store"]["key_env"]]
    assert resource("PodDisruptionBudget", "xoauth2-relay")["spec"]["minAvailable"] < \
        deployment["spec"]["replicas"]
    assert config["token_store"]["url"].startswith("redis://valkey-0.valkey:")
    assert resource("StatefulSet", "valkey")["spec"]["serviceName"] == "valkey"


def test_compose_example_runs_three_relays_on_one_valkey() -> None:
    """docker-compose.replicas.yml: three relay services with one config on the Redis backend."""
    compose = yaml.safe_load((REPO / "docker-compose.replicas.yml").read_text())
    relays = [name for name in compose["services"] if name.startswith("relay")]
    assert len(relays) == 3 and "valkey" in compose["services"]
    config = yaml.safe_load((REPO / "docs" / "docker" / "relay-replicas.yaml").read_text())
    assert config["token_store"]["backend"] == "redis"
    assert config["token_store"]["url"] == "redis://valkey:6379/0"
    for name in relays:
        assert set(compose["services"][name]["secrets"]) >= {"relay_store_key", "redis_password"}
