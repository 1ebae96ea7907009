"""Issue 13, item 13: the Kubernetes manifests of deploy/kubernetes, checked offline (no cluster runs here).

The kustomizations (the base and overlays/mtls) are rendered here by a small renderer that implements
exactly the kustomize features they use (resources, namespace, secretGenerator without hash suffixes,
JSON 6902 patches with a target) and refuses any other, so that a kustomization using more fails here
instead of being half rendered. Every rendered object is validated against the pinned Kubernetes
versions' OpenAPI schemas (kubernetes-validate, strict: unknown fields are errors), its references are
resolved (volumes, ConfigMaps, Secrets and their keys, claims, selectors, ports), and the stack is
checked to be compose.yaml's: same programs, ports, environment config items, config folders, image.
"""

from __future__ import annotations

import base64
import copy
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
MTLS = KUBE / "overlays" / "mtls"

# The Kubernetes versions whose schemas the manifests must pass (kubernetes-validate ships them): the
# oldest one the stack claims to run on (native gRPC probes are GA since 1.27) and the newest one the
# pinned kubernetes-validate knows. Bump the second with kubernetes-validate in constraints.txt.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

Obj = dict[str, Any]

KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "secretGenerator", "generatorOptions", "patches"}
CLUSTER_SCOPED = {"Namespace"}
BASE_OBJECTS = {
    ("Namespace", "grpc-helper"),
    ("ConfigMap", "grpc-helper-system"),
    ("ConfigMap", "grpc-helper-user"),
    ("Service", "main"),
    ("Service", "main-headless"),
    ("StatefulSet", "main"),
    ("Deployment", "echo"),
    ("PodDisruptionBudget", "echo"),
    ("PersistentVolumeClaim", "notes-workspace"),
    ("Deployment", "notes"),
}
MTLS_SECRETS = {
    ("Secret", "main-tls"),
    ("Secret", "echo-tls"),
    ("Secret", "notes-tls"),
    ("Secret", "grpc-helper-policy"),
}
WORKLOAD_KINDS = {"StatefulSet", "Deployment"}
PROXIED = ("echo", "notes")
SECRETS_MOUNT = "/run/secrets/grpc-helper"
HEALTH_PROBE = ["/opt/venv/bin/grpc-helper", "--host", "127.0.0.1", "--timeout", "3", "health"]
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")

# rpc-metrics-port of every service (compose's RPC_METRICS_PORT): the Prometheus endpoint, scraped as the pod
# annotations say (deploy/prometheus)
METRICS_PORT = 9464


# --- a minimal kustomize ---
def load_objects(path: Path) -> list[Obj]:
    docs = list(yaml.safe_load_all(path.read_text()))
    for index, doc in enumerate(docs):
        where = f"{path}, document {index + 1}"
        assert isinstance(doc, dict), f"{where}: not an object"
        assert isinstance(doc.get("apiVersion"), str), f"{where}: no apiVersion"
        assert isinstance(doc.get("kind"), str), f"{where}: no kind"
        assert isinstance(doc.get("metadata", {}).get("name"), str), f"{where}: no metadata.name"
    return docs


def pointer(path: str) -> list[str]:
    assert path.startswith("/"), f"not a JSON pointer: {path!r}"
    return [token.replace("~1", "/").replace("~0", "~") for token in path[1:].split("/")]


def apply_json6902(obj: Obj, operations: list[Obj]) -> None:
    """RFC 6902's add, replace and remove (all these manifests need); anything else fails."""
    for operation in operations:
        op, path = operation["op"], operation["path"]
        *parents, last = pointer(path)
        node: Any = obj
        for token in parents:
            node = node[int(token)] if isinstance(node, list) else node[token]
        if isinstance(node, list):
            index = len(node) if last == "-" and op == "add" else int(last)
            assert op == "add" or index < len(node), f"{op} {path}: no such element"
        else:
            assert op == "add" or last in node, f"{op} {path}: no such member"
        if op == "add" and isinstance(node, list):
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op in ("add", "replace"):
            node[index if isinstance(node, list) else last] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[index if isinstance(node, list) else last]
        else:
            raise AssertionError(f"JSON 6902 operation {op!r} is not implemented by this renderer")


def targets(obj: Obj, target: Obj) -> bool:
    """Kustomize's patch target, with exact (not regular expression) kind and name, `k=v` label terms."""
    assert set(target) <= {"group", "version", "kind", "name", "labelSelector"}, f"target {target}"
    group, _, version = obj["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": obj["kind"], "name": obj["metadata"]["name"]}
    if any(target[key] != value for key, value in wanted.items() if key in target):
        return False
    labels = obj["metadata"].get("labels", {})
    terms = [term.split("=", 1) for term in target.get("labelSelector", "").split(",") if term]
    return all(labels.get(key) == value for key, value in terms)


def generate_secret(folder: Path, spec: Obj, options: Obj) -> Obj:
    assert options.get("disableNameSuffixHash") is True, "generated names with a hash suffix are not implemented"
    assert set(spec) <= {"name", "type", "files"}, f"secretGenerator {spec}"
    data = {}
    for entry in spec["files"]:
        key, equal, path = entry.partition("=")
        if not equal:
            key, path = Path(entry).name, entry
        data[key] = base64.b64encode((folder / path).read_bytes()).decode()
    metadata = {"name": spec["name"]}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": spec.get("type", "Opaque"),
        "data": data,
    }


def render(folder: Path) -> list[Obj]:
    """`kustomize build folder`, for the features above: resources, then generators, patches, namespace."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: this test's renderer does not implement {sorted(unknown)}: add them to it"
    assert kustomization["kind"] == "Kustomization"
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        objects += render(path) if path.is_dir() else load_objects(path)
    options = kustomization.get("generatorOptions", {})
    objects += [generate_secret(folder, spec, options) for spec in kustomization.get("secretGenerator", [])]
    for patch in kustomization.get("patches", []):
        assert set(patch) <= {"path", "patch", "target"}, f"patch {patch}"
        assert "target" in patch, f"patch {patch}: patches without a target are not implemented"
        text = (folder / patch["path"]).read_text() if "path" in patch else patch["patch"]
        operations = yaml.safe_load(text)
        assert isinstance(operations, list), f"{patch}: only JSON 6902 patches (a list of operations) are implemented"
        matched = [obj for obj in objects if targets(obj, patch["target"])]
        assert matched, f"patch {patch} targets no object"
        for obj in matched:
            apply_json6902(obj, operations)
    if "namespace" in kustomization:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = kustomization["namespace"]
    return objects


# --- what the tests look at ---
@pytest.fixture(scope="module")
def mtls_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of deploy/kubernetes whose overlays/mtls/secrets scripts/stack_secrets.py created, as a user does."""
    copy_root = tmp_path_factory.mktemp("kubernetes") / "kubernetes"
    shutil.copytree(KUBE, copy_root, ignore=shutil.ignore_patterns("secrets"))  # a developer's own stay out
    secrets = copy_root / "overlays" / "mtls" / "secrets"
    script = ROOT / "scripts" / "stack_secrets.py"
    run = subprocess.run([sys.executable, str(script), "create", str(secrets)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return copy_root / "overlays" / "mtls"


@pytest.fixture(scope="module")
def base() -> list[Obj]:
    return render(KUBE)


@pytest.fixture(scope="module")
def mtls(mtls_folder: Path) -> list[Obj]:
    return render(mtls_folder)


@pytest.fixture(scope="module")
def compose() -> Obj:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())  # merge keys (<<: *service) resolved
    assert isinstance(data, dict)
    # The services of the deployment: an opt-in profile's are not (`observability`'s Prometheus: Kubernetes runs
    # its own, scraping as deploy/prometheus/kubernetes.yml says)
    data["services"] = {name: service for name, service in data["services"].items() if "profiles" not in service}
    return data


def by_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def workloads(objects: list[Obj]) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] in WORKLOAD_KINDS}


def pod(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def container(workload: Obj) -> Obj:
    containers = pod(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container, as a compose service"
    only: Obj = containers[0]
    return only


def env(workload: Obj) -> dict[str, Any]:
    """Name -> value, or the valueFrom mapping."""
    variables = container(workload).get("env", [])
    names = [variable["name"] for variable in variables]
    assert len(names) == len(set(names)), f"{workload['metadata']['name']}: a variable set twice: {names}"
    return {variable["name"]: variable.get("value", variable.get("valueFrom")) for variable in variables}


def mounts(workload: Obj) -> dict[str, Obj]:
    return {mount["mountPath"]: mount for mount in container(workload).get("volumeMounts", [])}


def volume_at(workload: Obj, path: str) -> Obj:
    """The volume (or volume claim template) mounted at `path`."""
    name = mounts(workload)[path]["name"]
    claims = {claim["metadata"]["name"]: claim for claim in workload["spec"].get("volumeClaimTemplates", [])}
    if name in claims:
        return {"name": name, "volumeClaimTemplate": claims[name]}
    volumes = {volume["name"]: volume for volume in pod(workload).get("volumes", [])}
    found: Obj = volumes[name]
    return found


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def compose_default(value: str) -> str:
    """`${VAR:-default}` -> default (what compose uses with VAR unset); anything else as it is."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value)
    return match.group(1) if match else value


def compose_mounts(service: Obj) -> dict[str, tuple[str | None, bool]]:
    """Container path -> (source or None for an anonymous volume, read-only)."""
    out = {}
    for spec in service["volumes"]:
        parts = re.sub(r"\$\{[^}]*\}", "VAR", spec).split(":")  # ${...:-...} holds colons of its own
        source = spec.split(":")[0] if len(parts) > 1 else None
        out[parts[1] if len(parts) > 1 else parts[0]] = (source, parts[2:] == ["ro"])
    return out


def stack_exports() -> dict[str, str]:
    """The GRPC_HELPER_STACK_* values scripts/stack.sh exports for the secure compose stack."""
    text = (ROOT / "scripts" / "stack.sh").read_text()
    return {name: value for name, value in re.findall(r"\b(GRPC_HELPER_STACK_\w+)=\"?([^\s\"]+)", text)}


def security_items(compose: Obj) -> dict[str, str]:
    """compose.yaml's x-security variables, resolved as stack.sh up sets them (mTLS, the policy on)."""
    exports = stack_exports()
    out = {}
    for name, value in compose["x-security"].items():
        match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", value)
        assert match, f"x-security {name}: {value!r}"
        assert match.group(1) in exports, f"stack.sh sets no {match.group(1)}"
        out[name] = exports[match.group(1)]
    return out


# --- the tests ---
def manifest_files() -> Iterator[Path]:
    for path in sorted(KUBE.rglob("*.yaml")):
        if "secrets" not in path.relative_to(KUBE).parts:
            yield path


def test_every_file_is_whole_objects_or_part_of_a_kustomization() -> None:
    """Each file holds whole objects (apiVersion, kind, metadata.name), and is a resource or patch of a
    kustomization: none is left out of what `kubectl apply -k` applies."""
    used: set[Path] = set()
    resources: set[Path] = set()
    for kustomization in KUBE.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        used.add(kustomization)
        for entry in data.get("resources", []):
            path = (kustomization.parent / entry).resolve()
            used.add(path if path.is_file() else path / "kustomization.yaml")
            if path.is_file():
                resources.add(path)
        used |= {
            (kustomization.parent / patch["path"]).resolve() for patch in data.get("patches", []) if "path" in patch
        }
    assert set(manifest_files()) == used
    assert resources, "no resource files"
    for path in sorted(resources):
        objects = load_objects(path)
        assert objects, f"{path}: empty"
        for obj in objects:  # whole: in their namespace as written, not only as a kustomization puts them
            if obj["kind"] not in CLUSTER_SCOPED:
                assert obj["metadata"].get("namespace") == "grpc-helper", f"{path}: {obj['metadata']}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", ["base", "mtls"])
def test_manifests_pass_the_kubernetes_schemas(overlay: str, version: str, request: pytest.FixtureRequest) -> None:
    """Every rendered object is valid for the Kubernetes API of `version` (strict: no unknown field)."""
    objects: list[Obj] = request.getfixturevalue(overlay)
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")
    assert not errors, "\n".join(errors)


def test_the_objects(base: list[Obj], mtls: list[Obj]) -> None:
    keys = [(obj["kind"], obj["metadata"]["name"]) for obj in base]
    assert len(keys) == len(set(keys)), f"an object twice: {keys}"
    assert set(keys) == BASE_OBJECTS
    assert {(obj["kind"], obj["metadata"]["name"]) for obj in mtls} == BASE_OBJECTS | MTLS_SECRETS
    for obj in base + mtls:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "grpc-helper", obj["metadata"]


@pytest.mark.parametrize("overlay", ["base", "mtls"])
def test_references_resolve(overlay: str, request: pytest.FixtureRequest) -> None:
    """What `kubectl apply` would take but leave pods pending or broken: a mount of no volume, a volume of no
    ConfigMap, Secret (key) or claim, a selector matching no pod, a Service port naming no container port."""
    objects: list[Obj] = request.getfixturevalue(overlay)
    config_maps, secrets = by_kind(objects, "ConfigMap"), by_kind(objects, "Secret")
    claims, services = by_kind(objects, "PersistentVolumeClaim"), by_kind(objects, "Service")
    for name, workload in workloads(objects).items():
        assert selects(workload["spec"]["selector"]["matchLabels"], pod_labels(workload)), name
        templates = {claim["metadata"]["name"] for claim in workload["spec"].get("volumeClaimTemplates", [])}
        volumes = {volume["name"]: volume for volume in pod(workload).get("volumes", [])}
        assert not templates & set(volumes), name
        for mount in container(workload)["volumeMounts"]:
            assert mount["name"] in volumes or mount["name"] in templates, f"{name}: {mount}"
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, f"{name}: {volume}"
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, f"{name}: {volume}"
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{name}: {volume}"
            for source in volume.get("projected", {}).get("sources", []):
                secret = secrets[source["secret"]["name"]]
                assert {item["key"] for item in source["secret"]["items"]} <= set(secret["data"]), f"{name}: {source}"
        if workload["kind"] == "StatefulSet":
            assert services[workload["spec"]["serviceName"]]["spec"]["clusterIP"] == "None", name
    for name, service in services.items():
        selected = [w for w in workloads(objects).values() if selects(service["spec"]["selector"], pod_labels(w))]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
        port_names = {port["name"]: port["containerPort"] for port in container(selected[0])["ports"]}
        for port in service["spec"]["ports"]:
            assert port_names.get(port["targetPort"]) == port["port"], f"Service {name}: {port}"
    for name, budget in by_kind(objects, "PodDisruptionBudget").items():
        selected = [
            w for w in workloads(objects).values() if selects(budget["spec"]["selector"]["matchLabels"], pod_labels(w))
        ]
        assert [w["metadata"]["name"] for w in selected] == ["echo"], f"PodDisruptionBudget {name}"


def test_main_echo_notes(base: list[Obj]) -> None:
    """main a StatefulSet with a persistent workspace behind a Service; echo scaled out with a workspace per
    replica and a disruption budget; notes one replica on its claim, recreated (never two on notes.json)."""
    found = workloads(base)
    main, echo, notes = found["main"], found["echo"], found["notes"]
    assert main["kind"] == "StatefulSet"
    assert main["spec"]["replicas"] == 1
    claim = volume_at(main, "/data/workspace")["volumeClaimTemplate"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    assert by_kind(base, "Service")["main"]["spec"]["type"] == "ClusterIP"
    assert echo["kind"] == "Deployment"
    assert echo["spec"]["replicas"] == 3
    assert "emptyDir" in volume_at(echo, "/data/workspace")
    assert echo["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert by_kind(base, "PodDisruptionBudget")["echo"]["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": echo["spec"]["selector"]["matchLabels"]},
    }
    assert notes["kind"] == "Deployment"
    assert notes["spec"]["replicas"] == 1
    assert notes["spec"]["strategy"] == {"type": "Recreate"}
    assert volume_at(notes, "/data/workspace")["persistentVolumeClaim"] == {"claimName": "notes-workspace"}


@pytest.mark.parametrize("name", PROXIED)
def test_proxied_samples_register_their_pod_ip(base: list[Obj], name: str) -> None:
    """rpc-proxy-host from the downward API, and main found through its Service (rpc-main-host)."""
    variables = env(workloads(base)[name])
    assert variables["RPC_PROXY_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert variables["RPC_MAIN_HOST"] in by_kind(base, "Service")
    assert selects(
        by_kind(base, "Service")[variables["RPC_MAIN_HOST"]]["spec"]["selector"], pod_labels(workloads(base)["main"])
    )


def test_probes_are_native_grpc_on_the_serving_port(base: list[Obj]) -> None:
    for name, workload in workloads(base).items():
        port = int(env(workload)["GRPC_HELPER_PORT"])
        assert [p["containerPort"] for p in container(workload)["ports"]] == [port, METRICS_PORT], name
        for probe in PROBES:
            assert container(workload)[probe]["grpc"] == {"port": port}, f"{name} {probe}"


def test_mtls_overlay(base: list[Obj], mtls: list[Obj], mtls_folder: Path, compose: Obj) -> None:
    """TLS on as in stack.sh up's compose stack: the x-security variables, each service's secrets mounted
    read-only at the same path under the same names, exec probes with the CLI's credentials (the kubelet's
    gRPC probes can't do TLS), and nothing else changed; the Secrets hold the files stack_secrets.py wrote,
    never the CA's key nor the operator's credentials."""
    secure = security_items(compose)
    secrets = by_kind(mtls, "Secret")
    files = mtls_folder / "secrets"
    timeout = float(HEALTH_PROBE[HEALTH_PROBE.index("--timeout") + 1])
    for name, workload in workloads(mtls).items():
        variables = env(workload)
        assert {key: variables[key] for key in secure} == secure, name
        assert mounts(workload)[SECRETS_MOUNT]["readOnly"] is True, name
        projected = volume_at(workload, SECRETS_MOUNT)["projected"]
        assert projected["defaultMode"] == 0o440, name
        mounted = {
            f"{SECRETS_MOUNT}/{item['path']}": base64.b64decode(secrets[source["secret"]["name"]]["data"][item["key"]])
            for source in projected["sources"]
            for item in source["secret"]["items"]
        }
        expected = {
            "cert.pem": f"{name}.crt",
            "key.pem": f"{name}.key",
            "ca.pem": "ca.crt",
            "policy.json": "policy.json",
        }
        assert mounted == {f"{SECRETS_MOUNT}/{path}": (files / file).read_bytes() for path, file in expected.items()}
        assert {value for key, value in secure.items() if key != "RPC_TLS_CLIENT_AUTH"} <= set(mounted), name
        for probe in PROBES:
            assert "grpc" not in container(workload)[probe], f"{name} {probe}"
            assert container(workload)[probe]["exec"]["command"] == HEALTH_PROBE, f"{name} {probe}"
            assert container(workload)[probe]["timeoutSeconds"] > timeout, f"{name} {probe}"
        # Nothing else: without the variables, the mount, the volume and the probes, it is the base's
        plain = copy.deepcopy(workload)
        spec = pod(plain)
        spec["volumes"] = [volume for volume in spec["volumes"] if "projected" not in volume]
        only = spec["containers"][0]
        only["env"] = [variable for variable in only["env"] if variable["name"] not in secure]
        only["volumeMounts"] = [mount for mount in only["volumeMounts"] if mount["mountPath"] != SECRETS_MOUNT]
        for probe in PROBES:
            only[probe] = container(workloads(base)[name])[probe]
        annotations = plain["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scheme"] == "https", name  # the metrics endpoint is mTLS too
        annotations["prometheus.io/scheme"] = "http"
        assert plain == workloads(base)[name], name
    assert {secrets[f"{name}-tls"]["type"] for name in workloads(mtls)} == {"kubernetes.io/tls"}
    private = {(files / file).read_bytes() for file in ("ca.key", "operator.key", "operator.token")}
    for secret in secrets.values():
        assert not {base64.b64decode(value) for value in secret["data"].values()} & private, secret["metadata"]["name"]


@pytest.mark.parametrize("overlay", ["base", "mtls"])
def test_non_root_restricted_with_resources(overlay: str, request: pytest.FixtureRequest) -> None:
    """Pod Security's `restricted` profile (which the namespace enforces), the image's user, a read-only
    root filesystem with /tmp (supervisord's files) writable, requests and limits on every container."""
    objects: list[Obj] = request.getfixturevalue(overlay)
    namespace = by_kind(objects, "Namespace")["grpc-helper"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for name, workload in workloads(objects).items():
        spec = pod(workload)
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }, name
        assert spec["automountServiceAccountToken"] is False, name  # nothing calls the Kubernetes API
        assert spec["enableServiceLinks"] is False, name  # no Service variables (a `grpc-helper` one: GRPC_HELPER_PORT)
        for each in spec["containers"] + spec.get("initContainers", []):
            assert each["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, name
            assert "emptyDir" in volume_at(workload, "/tmp"), name
            for bound in ("requests", "limits"):
                assert set(each["resources"].get(bound, {})) == {"cpu", "memory"}, f"{name} {bound}"
        assert all(
            not mount.get("readOnly") for path, mount in mounts(workload).items() if path in ("/tmp", "/data/workspace")
        )


def test_in_step_with_compose(base: list[Obj], compose: Obj) -> None:
    """The same programs on the same ports, with the same environment config items (plus rpc-proxy-host for
    the proxied ones), the same mounts (plus /tmp), the same image and stop grace period."""
    services: dict[str, Obj] = compose["services"]
    found = workloads(base)
    assert set(found) == set(services)
    named_volumes = set(compose["volumes"])
    for name, service in services.items():
        workload, variables = found[name], env(found[name])
        security = set(compose["x-security"])
        # compose's `${VAR:-default}` (x-otel's): the default, fixed here
        plain = {key: compose_default(value) for key, value in service["environment"].items() if key not in security}
        extra = {"RPC_PROXY_HOST"} if name in PROXIED else set()
        assert {key: value for key, value in variables.items() if key not in extra} == plain, name
        assert plain["GRPC_HELPER_PROGRAMS"] == name
        assert not security & set(variables), f"{name}: the base is plaintext"
        port = int(plain["GRPC_HELPER_PORT"])
        assert [int(p) for p in service["expose"]] == [port, METRICS_PORT]
        assert [p["containerPort"] for p in container(workload)["ports"]] == [port, METRICS_PORT]
        assert container(workload)["image"] == compose_default(service["image"])
        assert container(workload)["imagePullPolicy"] == "IfNotPresent"
        assert f"{pod(workload)['terminationGracePeriodSeconds']}s" == service["stop_grace_period"]
        expected = {path: ro for path, (_, ro) in compose_mounts(service).items() if path != SECRETS_MOUNT}
        assert {path: bool(m.get("readOnly")) for path, m in mounts(workload).items() if path != "/tmp"} == expected
        for path, (source, _) in compose_mounts(service).items():
            if path == SECRETS_MOUNT:
                continue
            volume = volume_at(workload, path)
            if source in named_volumes:  # compose's named volume: persistent here too
                assert "volumeClaimTemplate" in volume or "persistentVolumeClaim" in volume, f"{name} {path}"
            elif source is None:  # an anonymous volume: a replica's own, gone with it
                assert "emptyDir" in volume, f"{name} {path}"
            else:
                assert source.startswith("./deploy/"), f"{name}: {source}"  # a config folder: a ConfigMap
                assert volume["configMap"]["name"] in by_kind(base, "ConfigMap"), f"{name} {path}"
    published = [p.rsplit(":", 1)[1] for p in services["main"]["ports"]]
    assert published == [str(by_kind(base, "Service")["main"]["spec"]["ports"][0]["port"])]


@pytest.mark.parametrize(
    ("folder", "path"), [("system", "/etc/grpc_helper"), ("user", "/home/grpc/.config/grpc_helper")]
)
def test_config_maps_hold_the_config_folders(base: list[Obj], compose: Obj, folder: str, path: str) -> None:
    """The ConfigMap mounted where compose mounts deploy/<folder> holds its files, byte for byte."""
    files = {file.name: file.read_text() for file in sorted((ROOT / "deploy" / folder).iterdir()) if file.is_file()}
    assert files
    for name, service in compose["services"].items():
        assert compose_mounts(service)[path] == (f"./deploy/{folder}", True), name
        config_map = by_kind(base, "ConfigMap")[volume_at(workloads(base)[name], path)["configMap"]["name"]]
        assert config_map["data"] == files, f"{config_map['metadata']['name']} differs from deploy/{folder}"


def test_metrics_port_and_scrape_annotations(base: list[Obj]) -> None:
    """Every workload serves its metrics on METRICS_PORT (a named container port) and asks to be scraped there."""
    for name, workload in workloads(base).items():
        assert int(env(workload)["RPC_METRICS_PORT"]) == METRICS_PORT, name
        assert {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"} in container(workload)["ports"]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(METRICS_PORT),
            "prometheus.io/path": "/metrics",
            "prometheus.io/scheme": "http",
        }, name
