"""deploy/: what can be checked without Docker or a cluster (YAML, required
fields, cross-references), plus systemd-analyze and the image's healthcheck
command where they can run here."""

from __future__ import annotations

import configparser
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub.settings import Settings
from tests.support.nginx import NGINX_CONF, parse_config
from tests.support.procs import ROOT, HubProcess, free_port

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every object of deploy/k8s/*.yaml by kind (one of each)."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in objects, f"two {doc['kind']}s"
            assert doc["apiVersion"], path
            assert doc["metadata"]["name"], path
            objects[doc["kind"]] = doc
    return objects


OBJECTS = k8s_objects()
POD = OBJECTS["Deployment"]["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]
ENV = {e["name"]: e["value"] for e in CONTAINER["env"] if "value" in e}
FROM_SECRETS = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in CONTAINER["env"] if "valueFrom" in e}


def test_the_manifests_hold_a_deployment_service_ingress_budget_and_network_policy() -> None:
    # No Secret: its values are yours (kubectl create secret, in deployment.yaml's comment).
    assert set(OBJECTS) == {"Deployment", "Service", "Ingress", "PodDisruptionBudget", "NetworkPolicy"}


def test_the_secrets_come_from_a_secret_that_is_not_shipped() -> None:
    assert set(FROM_SECRETS) == {"HUB_PUBLISH_TOKENS", "HUB_JWT_SECRET"}
    assert not {"HUB_PUBLISH_TOKENS", "HUB_JWT_SECRET", "HUB_PUBLISH_OPEN"} & set(ENV)
    # The publish token is required: a pod without it would refuse every publisher behind the ingress.
    assert FROM_SECRETS["HUB_PUBLISH_TOKENS"].get("optional", False) is False
    text = (K8S / "deployment.yaml").read_text()
    for ref in FROM_SECRETS.values():
        assert f"kubectl create secret generic {ref['name']}" in text
        assert f"--from-literal={ref['key']}=" in text


def test_pods_trust_forwarded_addresses_only_from_a_network() -> None:
    for network in ENV["HUB_TRUSTED_PROXIES"].split(","):
        assert ipaddress.ip_network(network.strip()).is_private, network


def test_the_network_policy_lets_in_only_the_ingress_controller_and_the_namespace() -> None:
    policy = OBJECTS["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= POD["metadata"]["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == [p["name"] for p in CONTAINER["ports"]]
    sources = rule["from"]
    assert len(sources) == 2
    controller, namespace = sources
    assert controller["namespaceSelector"]["matchLabels"]
    assert controller["podSelector"]["matchLabels"]
    assert namespace == {"podSelector": {}}  # this namespace only: no namespaceSelector


def test_readiness_is_probed_on_readyz_and_liveness_on_healthz() -> None:
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = CONTAINER[probe]["httpGet"]
        assert get["path"] == path
        assert ports[get["port"]] == int(ENV["HUB_PORT"])


def test_the_grace_period_outlasts_the_pre_stop_wait_and_the_drain() -> None:
    pre_stop = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(ENV["HUB_SHUTDOWN_SECONDS"])
    assert POD["spec"]["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain


def test_pods_run_as_the_images_non_root_user() -> None:
    security = POD["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == dockerfile_user().split(":")[0]
    assert CONTAINER["securityContext"]["allowPrivilegeEscalation"] is False


def test_a_rollout_starts_a_new_pod_before_it_stops_an_old_one() -> None:
    rolling = OBJECTS["Deployment"]["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxUnavailable"], rolling["maxSurge"]) == (0, 1)


def test_service_and_budget_select_the_deployments_pods() -> None:
    labels = POD["metadata"]["labels"]
    assert OBJECTS["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert OBJECTS["Service"]["spec"]["selector"].items() <= labels.items()
    assert OBJECTS["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = OBJECTS["Service"]["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in CONTAINER["ports"]}


def test_the_ingress_turns_buffering_off_and_matches_nginx_conf() -> None:
    ingress = OBJECTS["Ingress"]
    notes = {
        k.removeprefix("nginx.ingress.kubernetes.io/"): v
        for k, v in ingress["metadata"]["annotations"].items()
    }
    assert notes["proxy-buffering"] == "off"
    assert int(notes["proxy-read-timeout"]) >= 4 * Settings().heartbeat_seconds
    publish = [
        d
        for d in parse_config(NGINX_CONF.read_text()).one("http").one("server").find("location")
        if d.args[-1].endswith("/events$")
    ]
    assert notes["proxy-body-size"] == publish[0].value("client_max_body_size")[0]
    (rule,) = ingress["spec"]["rules"]
    for path in rule["http"]["paths"]:
        backend = path["backend"]["service"]
        assert backend["name"] == OBJECTS["Service"]["metadata"]["name"]
        assert backend["port"]["name"] in {p["name"] for p in OBJECTS["Service"]["spec"]["ports"]}


SERVER = parse_config(NGINX_CONF.read_text()).one("http").one("server")
(STREAM_LOCATION,) = [d for d in SERVER.find("location") if d.args[-1].endswith("stream$")]


@pytest.mark.parametrize(
    "path",
    [
        "/channels/news/stream",
        "/stream",
        "/",
        "/channels",
        "/channels/news/events",
        "/metrics",
        "/docs",
        "/ui",
        "/_hub/stats",
        "/healthz",
        "/channels/a/b/stream",
        "/streams",
    ],
)
def test_the_ingress_routes_exactly_the_stream_paths_of_nginx_conf(path: str) -> None:
    # What nginx.conf serves to every address (its stream location) is what the
    # ingress makes public; nothing else (publishes and the admin endpoints stay
    # in the cluster).
    ingress = OBJECTS["Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/use-regex"] == "true"
    (rule,) = ingress["spec"]["rules"]
    paths = rule["http"]["paths"]
    assert {p["pathType"] for p in paths} == {"ImplementationSpecific"}
    # ingress-nginx anchors a regex path at the start (location ~* "^...").
    routed = any(re.match("^" + p["path"], path, re.IGNORECASE) for p in paths)
    assert routed == bool(re.search(STREAM_LOCATION.args[-1], path))


def test_the_ingress_limits_streams_per_address_as_nginx_conf_does() -> None:
    notes = OBJECTS["Ingress"]["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/limit-connections"] == STREAM_LOCATION.value("limit_conn")[1]


# -- docker-compose ------------------------------------------------------------

COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_redis_two_hubs_and_nginx_with_the_shipped_config() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"redis", "hub1", "hub2", "nginx"}
    assert "../nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    upstream = parse_config(NGINX_CONF.read_text()).one("http").one("upstream")
    port = dockerfile_env()["HUB_PORT"]
    assert [d.args[0] for d in upstream.find("server")] == [f"hub1:{port}", f"hub2:{port}"]


def test_compose_hubs_share_redis_and_get_time_to_drain() -> None:
    for name in ("hub1", "hub2"):
        hub = COMPOSE["services"][name]
        assert hub["environment"]["HUB_REDIS_URL"].startswith("redis://redis:")
        grace = int(hub["stop_grace_period"].removesuffix("s"))
        assert grace > float(hub["environment"]["HUB_SHUTDOWN_SECONDS"])
        assert hub["ulimits"]["nofile"]["soft"] >= 65536
        assert (ROOT / "deploy" / hub["build"]["dockerfile"]).resolve().relative_to(ROOT)
        assert (DEPLOY / hub["build"]["context"] / hub["build"]["dockerfile"]).exists()


def test_compose_requires_the_publish_token_and_keeps_secrets_out_of_the_file() -> None:
    for name in ("hub1", "hub2"):
        env = COMPOSE["services"][name]["environment"]
        # ${VAR:?message}: `docker compose up` stops with the message when it is unset.
        assert re.fullmatch(
            r"\$\{HUB_PUBLISH_TOKENS:\?[^}]*HUB_PUBLISH_TOKENS[^}]*\}", env["HUB_PUBLISH_TOKENS"]
        )
        assert env["HUB_JWT_SECRET"] == "${HUB_JWT_SECRET:-}"
        assert "HUB_PUBLISH_OPEN" not in env
    assert "deploy/.env" in (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/.env" in (ROOT / ".dockerignore").read_text().splitlines()


def test_compose_nodes_trust_only_nginx_and_only_nginx_is_published() -> None:
    services = COMPOSE["services"]
    nginx_address = services["nginx"]["networks"]["hubnet"]["ipv4_address"]
    (subnet,) = COMPOSE["networks"]["hubnet"]["ipam"]["config"]
    network = ipaddress.IPv4Network(subnet["subnet"])
    assert ipaddress.ip_address(nginx_address) in network
    for name in ("hub1", "hub2"):
        assert services[name]["environment"]["HUB_TRUSTED_PROXIES"] == nginx_address
        assert services[name]["networks"] == ["hubnet"]
    assert [name for name, service in services.items() if "ports" in service] == ["nginx"]
    # Compose's own network is private, so nginx.conf lets the Docker host publish through it.
    assert network.subnet_of(ipaddress.IPv4Network("172.16.0.0/12"))


# -- Dockerfile ----------------------------------------------------------------

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()


def steps() -> list[tuple[str, str]]:
    """(instruction, arguments) of every stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def final_stage() -> list[tuple[str, str]]:
    all_steps = steps()
    last_from = max(i for i, (op, _) in enumerate(all_steps) if op == "FROM")
    return all_steps[last_from:]


def instruction(name: str) -> str:
    found = [args for op, args in final_stage() if op == name]
    assert found, f"no {name} in the final stage"
    return found[-1]


def dockerfile_user() -> str:
    return instruction("USER")


def dockerfile_env() -> dict[str, str]:
    return dict(shlex.split(part)[0].split("=", 1) for part in shlex.split(instruction("ENV")))


def test_the_image_is_slim_and_runs_as_a_non_root_user() -> None:
    assert "slim" in instruction("FROM")
    user = dockerfile_user().split(":")[0]
    assert user not in ("root", "0")


def test_the_image_starts_ssehub_in_exec_form_so_sigterm_reaches_it() -> None:
    assert json.loads(instruction("ENTRYPOINT")) == ["ssehub"]
    assert json.loads(instruction("CMD")) == ["serve"]
    assert instruction("STOPSIGNAL") == "SIGTERM"
    assert dockerfile_env()["HUB_HOST"] == "0.0.0.0"
    assert instruction("EXPOSE") == dockerfile_env()["HUB_PORT"]


def test_the_image_installs_the_locked_versions() -> None:
    copied = [args.split()[:-1] for op, args in steps() if op == "COPY" and "--from" not in args]
    assert any("constraints.txt" in sources for sources in copied)
    installs = [args for op, args in steps() if op == "RUN" and "pip install" in args]
    assert installs
    assert all("-c constraints.txt" in args for args in installs), installs


def test_the_build_copies_only_what_the_dockerignore_lets_through() -> None:
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"
    }
    assert {".git", ".venv", "tests"} <= ignored
    copied = [args.split()[:-1] for op, args in steps() if op == "COPY" and "--from" not in args]
    assert copied
    for sources in copied:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source not in ignored


def healthcheck_command() -> list[str]:
    args = instruction("HEALTHCHECK")
    command = json.loads(args[args.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_image_healthcheck_passes_on_a_live_hub_and_fails_without_one(hub_server: HubProcess) -> None:
    assert "/healthz" in instruction("HEALTHCHECK")
    env = {**os.environ, "HUB_PORT": str(hub_server.port)}
    assert subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=10).returncode == 0
    env["HUB_PORT"] = str(free_port())
    assert subprocess.run(healthcheck_command(), env=env, capture_output=True, timeout=10).returncode != 0


# -- systemd -------------------------------------------------------------------

UNIT_PATH = DEPLOY / "systemd" / "ssehub.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT_PATH.read_text())
    return parser


def test_the_unit_raises_the_file_limit_and_waits_out_the_drain() -> None:
    service = unit()["Service"]
    assert int(service["LimitNOFILE"]) >= 65536
    env = dict(pair.split("=", 1) for pair in service["Environment"].split())
    assert int(service["TimeoutStopSec"]) > float(env["HUB_SHUTDOWN_SECONDS"])
    assert service["KillSignal"] == "SIGTERM"
    assert service["ExecStart"].split()[1:] == ["serve"]


def test_the_unit_listens_on_loopback_behind_nginx_and_reads_secrets_from_a_file() -> None:
    service = unit()["Service"]
    env = dict(pair.split("=", 1) for pair in service["Environment"].split())
    assert env["HUB_HOST"] == "127.0.0.1"
    assert env["HUB_TRUSTED_PROXIES"] == "127.0.0.1"
    assert not {"HUB_PUBLISH_TOKENS", "HUB_JWT_SECRET", "HUB_PUBLISH_OPEN"} & set(env)
    # Required (no "-"): a node without its secrets fails to start instead of refusing every publisher.
    path = service["EnvironmentFile"]
    assert path == "/etc/ssehub/ssehub.env"
    text = UNIT_PATH.read_text()
    # The instructions create it root-only and put a publish token in it; no copy ships.
    assert f"install -m 0600 -o root -g root /dev/null {path}" in text
    assert f'HUB_PUBLISH_TOKENS=$(openssl rand -hex 32)" >> {path}' in text
    assert not (DEPLOY / "systemd" / Path(path).name).exists()
    # Installed at the locked versions.
    assert "pip install -c /path/to/ssehub/constraints.txt /path/to/ssehub" in text


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # not a CI-required tool: checked where present
        pytest.skip("systemd-analyze is not installed")
    ssehub = Path(sys.executable).with_name("ssehub")
    text = UNIT_PATH.read_text()
    assert "ExecStart=/opt/ssehub/bin/ssehub " in text
    copy = tmp_path / "ssehub.service"
    copy.write_text(text.replace("/opt/ssehub/bin/ssehub", str(ssehub)))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ssehub.service" not in result.stderr, result.stderr
