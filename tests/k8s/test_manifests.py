"""The Kubernetes manifests in k8s/: every overlay builds, validates against the Kubernetes and
KubeRay schemas, embeds serve_config.yaml plus exactly its listed overrides, and keeps the
resource arithmetic right (one card per worker and per engine replica, replica bounds that
agree between Serve and KubeRay, grace periods longer than Serve's graceful shutdown)."""

from __future__ import annotations

import copy
import json
import math
import re
import shlex
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from k8s import generate

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SCHEMAS = REPO.parent / "shared" / "k8s-schemas"  # KubeRay's CRDs, beside the checkout
OVERLAYS = generate.OVERLAYS
KUBECTL = shutil.which("kubectl")
# Kubernetes versions to validate the built-in kinds against (kubernetes-validate ships their
# schemas; "latest" is the newest it has).
K8S_VERSIONS = ("1.29", "latest")
ACCELERATOR_LIMITS = ("huawei.com/Ascend910", "nvidia.com/gpu", "amd.com/gpu")
RAY_DEFAULT_GRACEFUL_SHUTDOWN_S = 20  # Serve's default graceful_shutdown_timeout_s
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 1 MB each

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: cannot run `kubectl kustomize`")


# --- building and reading the manifests ---------------------------------------------------------


@cache
def build(path: str) -> tuple[dict, ...]:
    """`kubectl kustomize k8s/<path>`, parsed (cached: each kustomization builds once per run)."""
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"kubectl kustomize k8s/{path} failed:\n{proc.stderr}"
    return tuple(doc for doc in yaml.load_all(proc.stdout, Loader=_Loader) if doc)


def docs(overlay: str) -> tuple[dict, ...]:
    return build(f"overlays/{overlay}")


def rayservice(overlay: str) -> dict:
    [rs] = [d for d in docs(overlay) if d["kind"] == "RayService"]
    return rs


def head_group(overlay: str) -> dict:
    return rayservice(overlay)["spec"]["rayClusterConfig"]["headGroupSpec"]


def worker_groups(overlay: str) -> list[dict]:
    groups = rayservice(overlay)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert groups, "no worker group"
    return groups


def ray_container(group: dict) -> dict:
    return group["template"]["spec"]["containers"][0]  # KubeRay: the Ray container comes first


def pod_templates(overlay: str) -> list[tuple[str, dict]]:
    cluster = rayservice(overlay)["spec"]["rayClusterConfig"]
    return [("head", cluster["headGroupSpec"]["template"])] + [
        (g["groupName"], g["template"]) for g in cluster["workerGroupSpecs"]
    ]


def embedded_serve_config(overlay: str) -> dict:
    """spec.serveConfigV2 of the built overlay; without kubectl, the generated file kustomize
    embeds verbatim (so the Serve config checks still run)."""
    if KUBECTL is None:
        return yaml.safe_load(generate.output_path(overlay).read_text())
    return yaml.safe_load(rayservice(overlay)["spec"]["serveConfigV2"])


def app(config: dict) -> dict:
    [application] = [a for a in config["applications"] if a["name"] == generate.APP]
    return application


def deployment(config: dict, name: str) -> dict:
    [dep] = [d for d in app(config)["deployments"] if d["name"] == name]
    return dep


def quantity(value) -> float:
    """A Kubernetes quantity ("8", "500m", "16Gi", 1) as a number."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


def ray_start_resources(group: dict) -> dict:
    """Custom Ray resources as `ray start` receives them: KubeRay writes `--resources=<value>`
    into a bash command line, so the value goes through shell quoting first."""
    value = group.get("rayStartParams", {}).get("resources")
    if value is None:
        return {}
    [arg] = shlex.split(f"--resources={value}")
    return json.loads(arg.removeprefix("--resources="))


def autoscaler_view(group: dict, is_head: bool = False) -> dict:
    """The Ray resources the Ray autoscaler attributes to a group (its own KubeRay parser)."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_ray_resources_from_group_spec

    return _get_ray_resources_from_group_spec(copy.deepcopy(group), is_head=is_head)


# --- the generator ------------------------------------------------------------------------------


def test_generated_serve_configs_are_current():
    stale = [str(p.relative_to(REPO)) for p in generate.stale()]
    assert not stale, f"stale generated files {stale}: run `python -m k8s.generate` and commit them"


def test_overrides_must_name_existing_deployments():
    with pytest.raises(KeyError, match="TTSEngin"):
        generate.deep_merge(generate.load_source(), {"applications": {"csm": {"deployments": {"TTSEngin": {}}}}})


# --- kustomize builds ---------------------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("path", ["base"] + [f"overlays/{o}" for o in OVERLAYS])
def test_kustomization_builds(path):
    kinds = sorted(d["kind"] for d in build(path))
    assert kinds.count("RayService") == 1
    assert kinds.count("PodMonitor") == 2
    names = {d["metadata"]["name"] for d in build(path)}
    assert "csm-serve-config" not in names, "the serve-config ConfigMap is build-time only (local-config)"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_resources(overlay):
    pvcs = {d["metadata"]["name"] for d in docs(overlay) if d["kind"] == "PersistentVolumeClaim"}
    assert pvcs == ({"csm-voices"} if overlay == "cpu" else {"csm-voices", "csm-models"})
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "csm-serve" for d in docs(overlay))


# --- schemas: Kubernetes built-in kinds ---------------------------------------------------------


def _is_builtin(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_kinds_validate_against_kubernetes_schemas(overlay):
    """Strict (unknown fields are errors) with kubernetes-validate's bundled, offline schemas;
    the RayService's pod templates are checked as the PodTemplates they become."""
    kv = pytest.importorskip("kubernetes_validate.utils", reason="kubernetes-validate is not installed")
    objects = [d for d in docs(overlay) if _is_builtin(d["apiVersion"])]
    assert objects, "expected PersistentVolumeClaims"
    objects += [
        {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}
        for name, template in pod_templates(overlay)
    ]
    for version in K8S_VERSIONS:
        version = kv.latest_version() if version == "latest" else version
        for obj in objects:
            error = None
            try:
                kv.validate(obj, version, strict=True)
            except kv.ValidationError as e:
                where = f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version})"
                error = f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
            assert error is None, error


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_podmonitors_scrape_every_ray_pod_on_the_metrics_port(overlay):
    """No schema for monitoring.coreos.com ships offline: check the fields that matter."""
    monitors = [d for d in docs(overlay) if d["kind"] == "PodMonitor"]
    assert {m["apiVersion"] for m in monitors} == {"monitoring.coreos.com/v1"}
    by_type = {m["spec"]["selector"]["matchLabels"]["ray.io/node-type"]: m for m in monitors}
    assert set(by_type) == {"head", "worker"}
    templates = {"head": [head_group(overlay)], "worker": worker_groups(overlay)}
    for node_type, monitor in by_type.items():
        assert set(monitor["spec"]) <= {"selector", "podMetricsEndpoints", "jobLabel", "namespaceSelector"}
        endpoints = monitor["spec"]["podMetricsEndpoints"]
        assert "metrics" in [e["port"] for e in endpoints]
        for group in templates[node_type]:
            labels = group["template"]["metadata"]["labels"]
            match = monitor["spec"]["selector"]["matchLabels"]
            selector = {k: v for k, v in match.items() if not k.startswith("ray.io/")}
            assert selector.items() <= labels.items(), "the PodMonitor must select this group's pods"
            ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
            assert ports["metrics"] == int(group["rayStartParams"]["metrics-export-port"]) == 8080
            assert {e["port"] for e in endpoints} <= set(ports), "a scraped port name the pod does not declare"


# --- schemas: KubeRay CRDs ----------------------------------------------------------------------


def _crd_schema(filename: str) -> dict:
    path = SCHEMAS / filename
    if not path.is_file():
        pytest.skip(f"KubeRay CRD schema {path} is absent (tests expect ../shared/k8s-schemas beside the repo)")
    return _crd_schema_cached(str(path))


@cache
def _crd_schema_cached(path: str) -> dict:
    crd = yaml.load(Path(path).read_text(), Loader=_Loader)
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])


def _openapi_to_jsonschema(node):
    """A CRD's structural OpenAPI v3 schema as JSON Schema, strict like `kubectl apply
    --validate=strict` (the API server would silently prune unknown fields instead):
    - x-kubernetes-int-or-string: integer or string;
    - nullable: also null;
    - objects with `properties` accept no other keys unless x-kubernetes-preserve-unknown-fields;
    - x-kubernetes-list-type map/set: keys / items unique (custom keywords below);
    - formats int32/int64: range-checked (the format checker below);
    - x-kubernetes-validations (CEL; here only managedBy immutability rules): not evaluated."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    # `default` is kept aside as `_default` (a list-map key may default, e.g. a port's protocol);
    # the keys of `properties` are field names, converted as they are.
    out = {
        ("_default" if k == "default" else k): (
            {name: _openapi_to_jsonschema(sub) for name, sub in v.items()}
            if k == "properties"
            else _openapi_to_jsonschema(v)
        )
        for k, v in node.items()
        if k not in ("description", "example")
    }
    if out.get("x-kubernetes-int-or-string") and "type" not in out and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def _list_map_keys(validator, keys, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    defaults = {k: schema.get("items", {}).get("properties", {}).get(k, {}).get("_default") for k in keys}
    seen = set()
    for item in instance:
        key = tuple(item.get(k, defaults[k]) for k in keys)
        if key in seen:
            yield jsonschema.ValidationError(f"duplicate entry for list-map keys {keys}: {key}")
        seen.add(key)


def _list_type(validator, list_type, instance, schema):
    if list_type == "set" and validator.is_type(instance, "array"):
        items = [json.dumps(i, sort_keys=True) for i in instance]
        if len(items) != len(set(items)):
            yield jsonschema.ValidationError(f"duplicate items in a list-type set: {instance}")


_FORMATS = jsonschema.FormatChecker()


@_FORMATS.checks("int32")
def _int32(value):
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value):
    return not isinstance(value, int) or -(2**63) <= value < 2**63


CRDValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    {"x-kubernetes-list-map-keys": _list_map_keys, "x-kubernetes-list-type": _list_type},
)


def _crd_errors(schema: dict, instance: dict) -> list[str]:
    errors = CRDValidator(schema, format_checker=_FORMATS).iter_errors(instance)
    return sorted(f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors)


def test_crd_conversion_is_strict():
    """The converted schema rejects what the API server would prune or refuse."""
    schema = _crd_schema("ray.io_rayservices.yaml")
    good = {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "x"},
        "spec": {
            "rayClusterConfig": {
                "headGroupSpec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {"name": "ray-head", "image": "csm-serve:latest", "ports": [{"containerPort": 8000}]}
                            ]
                        }
                    }
                }
            }
        },
    }
    assert _crd_errors(schema, good) == []
    typo = copy.deepcopy(good)
    typo["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    assert any("enableInTreeAutoscalling" in e for e in _crd_errors(schema, typo))
    duplicate_port = copy.deepcopy(good)
    ports = duplicate_port["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]
    ports.append({"containerPort": 8000})
    assert any("duplicate" in e for e in _crd_errors(schema, duplicate_port))
    too_big = copy.deepcopy(good)
    too_big["spec"]["rayClusterDeletionDelaySeconds"] = 2**40
    assert any("int32" in e for e in _crd_errors(schema, too_big))


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayservice_validates_against_kuberay_crd(overlay):
    rs = rayservice(overlay)
    assert rs["apiVersion"] == "ray.io/v1"
    assert _crd_errors(_crd_schema("ray.io_rayservices.yaml"), rs) == []
    # rayClusterConfig becomes the spec of the RayCluster that KubeRay creates from it.
    cluster = {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": "csm-serve-raycluster"},
        "spec": rs["spec"]["rayClusterConfig"],
    }
    assert _crd_errors(_crd_schema("ray.io_rayclusters.yaml"), cluster) == []


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_admission_rules(overlay):
    """Rules KubeRay's own validation enforces beyond the CRD schema (ValidateRayServiceSpec)."""
    rs = rayservice(overlay)
    name = rs["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 47  # DNS-1035, + cluster suffix
    assert rs["spec"]["upgradeStrategy"]["type"] in {"NewCluster", "None", "NewClusterWithIncrementalUpgrade"}
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len({g["groupName"] for g in cluster["workerGroupSpecs"]}) == len(cluster["workerGroupSpecs"])
    for group in groups:
        # Ray resources come from rayStartParams here, so the group-level `resources` map must stay unset.
        assert "resources" not in group and "labels" not in group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


# --- the embedded Serve config ------------------------------------------------------------------


def _flatten(value, prefix=()) -> dict:
    """{path: leaf}; items of named lists are addressed by their name (like the overrides)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(i, dict) and "name" in i for i in value):
        items = ((i["name"], {k: v for k, v in i.items() if k != "name"}) for i in value)
    else:
        return {prefix: value}
    out = {}
    for key, sub in items:
        out.update(_flatten(sub, prefix + (key,)))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_is_serve_config_yaml_plus_listed_overrides(overlay):
    """Independent of the generator's merge: every leaf of the embedded config is the source's
    value unless the overrides list that very path, and nothing else is added or lost."""
    source = _flatten(yaml.safe_load((REPO / "serve_config.yaml").read_text()))
    overrides = _flatten(generate.overrides(overlay))
    embedded = _flatten(embedded_serve_config(overlay))
    assert set(embedded) == set(source) | set(overrides)
    for path, value in embedded.items():
        expected = overrides[path] if path in overrides else source[path]
        assert value == expected, f"{'.'.join(map(str, path))}: {value!r} != {expected!r}"
    changed = {p for p in source if p in overrides and overrides[p] != source[p]}
    assert changed, "an overlay with no production override?"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_passes_ray_serve_and_app_schemas(overlay):
    from ray.serve.schema import ServeDeploySchema

    from deployments.placement import AppArgs
    from serve.settings import ServerSettings

    config = embedded_serve_config(overlay)
    schema = ServeDeploySchema.model_validate(config)  # Ray Serve's own check (serve deploy / KubeRay)
    assert [a.name for a in schema.applications] == [generate.APP]
    args = AppArgs.model_validate(app(config)["args"])  # what build_app validates (extra fields forbidden)
    ServerSettings(**args.server)
    # No ray_actor_options for the engine: a block in the config would replace build_app's
    # (and drop the card). See serve_config.yaml.
    assert "ray_actor_options" not in deployment(config, "SpeechReplica")
    assert config["http_options"]["host"] == "0.0.0.0"
    expected_device = {"ascend": "npu", "nvidia": "cuda", "cpu": "cpu"}[overlay]
    assert args.engine.device == expected_device
    assert args.engine.model == ("csm-tiny" if overlay == "cpu" else generate.MODEL_DIR)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_target_fits_the_batch(overlay):
    config = embedded_serve_config(overlay)
    engine = deployment(config, "SpeechReplica")
    max_num_seqs = app(config)["args"]["engine"]["max_num_seqs"]
    autoscaling = engine["autoscaling_config"]
    # Serve's bounds come from the args (build_app: max_num_seqs + max_queued_requests), never from
    # the deployment block, so the replica's admission is the one queue (replica/admission.py).
    assert "max_ongoing_requests" not in engine and "max_queued_requests" not in engine
    from deployments.app import build_app_with
    from deployments.placement import AppArgs

    args = AppArgs.model_validate(app(config)["args"])
    ingress = build_app_with({**app(config)["args"], "engine": {**args.engine.model_dump(), "device": "cpu"}})
    engine_deployment = ingress._bound_deployment.init_args[0]._bound_deployment  # the ingress's argument
    assert engine_deployment.max_ongoing_requests == args.engine.max_num_seqs + args.max_queued_requests
    assert engine_deployment.max_queued_requests == args.max_queued_requests
    # Scale up before the engine's slots are full (0.75 x max_num_seqs in serve_config.yaml).
    assert 0 < autoscaling["target_ongoing_requests"] < max_num_seqs
    assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"]


# --- cards, replicas and Ray resources ----------------------------------------------------------


@needs_kubectl
def test_ascend_workers_ask_for_exactly_one_npu():
    for group in worker_groups("ascend"):
        limits = ray_container(group)["resources"]["limits"]
        assert quantity(limits["huawei.com/Ascend910"]) == 1, "one Ascend card per pod (Kubernetes limit)"
        assert ray_start_resources(group) == {"NPU": 1}, "one card per pod (Ray resource)"
        assert autoscaler_view(group)["NPU"] == 1, "the Ray autoscaler must see the NPU too"
        env = {e["name"]: e.get("value") for e in ray_container(group)["env"]}
        assert env["PYTORCH_NPU_ALLOC_CONF"] == "expandable_segments:True"
        assert not set(limits) & (set(ACCELERATOR_LIMITS) - {"huawei.com/Ascend910"})


@needs_kubectl
def test_nvidia_workers_ask_for_exactly_one_gpu():
    for group in worker_groups("nvidia"):
        limits = ray_container(group)["resources"]["limits"]
        assert quantity(limits["nvidia.com/gpu"]) == 1
        assert "resources" not in group.get("rayStartParams", {}), "KubeRay maps nvidia.com/gpu itself"
        assert autoscaler_view(group)["GPU"] == 1
        assert not set(limits) & (set(ACCELERATOR_LIMITS) - {"nvidia.com/gpu"})


@needs_kubectl
def test_cpu_overlay_uses_no_accelerator():
    for _, template in pod_templates("cpu"):
        for container in template["spec"]["containers"]:
            limits = container.get("resources", {}).get("limits", {})
            assert not set(limits) & set(ACCELERATOR_LIMITS)
    for group in worker_groups("cpu"):
        assert ray_start_resources(group) == {}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_head_runs_no_replicas(overlay):
    head = head_group(overlay)
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert rayservice(overlay)["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    assert not set(ray_container(head)["resources"].get("limits", {})) & set(ACCELERATOR_LIMITS)
    view = autoscaler_view(head, is_head=True)
    assert view["CPU"] == 0 and not view.get("GPU") and not view.get("NPU")


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_engine_replica_per_worker_and_bounds_agree(overlay):
    """What an engine replica asks Ray for (deployments/app.py) fits exactly once in a worker,
    never on the head, and KubeRay may start as many workers as Serve may want replicas."""
    from deployments.placement import AppArgs, engine_actor_options

    config = embedded_serve_config(overlay)
    args = AppArgs.model_validate(app(config)["args"])
    options = engine_actor_options(args.engine, args.cpus_per_engine)  # explicit device: no cluster lookup
    demand = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0), **options.get("resources", {})}
    demand = {k: v for k, v in demand.items() if v}
    autoscaling = deployment(config, "SpeechReplica")["autoscaling_config"]
    groups = worker_groups(overlay)
    assert len(groups) == 1, "one worker group per accelerator kind"
    for group in groups:
        supply = autoscaler_view(group)
        fits = min(math.floor(supply.get(k, 0) / v) for k, v in demand.items())
        assert fits == 1, f"{group['groupName']}: {supply} holds {fits} engine replicas asking {demand}"
        surge = math.ceil(autoscaling["max_replicas"] * deployment(config, "SpeechReplica")["max_surge_percent"] / 100)
        assert group["maxReplicas"] >= (autoscaling["max_replicas"] + surge) * fits  # room for a rolling update
        assert group["minReplicas"] == autoscaling["min_replicas"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    head = autoscaler_view(head_group(overlay), is_head=True)
    assert any(head.get(k, 0) < v for k, v in demand.items()), "an engine replica would fit on the head"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_periods_outlast_serve_graceful_shutdown(overlay):
    config = embedded_serve_config(overlay)
    graceful = max(
        d.get("graceful_shutdown_timeout_s", RAY_DEFAULT_GRACEFUL_SHUTDOWN_S) for d in app(config)["deployments"]
    )
    assert graceful == 120
    spec = rayservice(overlay)["spec"]
    assert spec["rayClusterDeletionDelaySeconds"] > graceful, "the old cluster must outlive in-flight requests"
    for name, template in pod_templates(overlay):
        grace = template["spec"]["terminationGracePeriodSeconds"]
        assert grace > graceful, f"{name}: terminationGracePeriodSeconds {grace} <= {graceful}"
    for group in worker_groups(overlay):
        script = " ".join(ray_container(group)["lifecycle"]["preStop"]["exec"]["command"])
        deadline = int(re.search(r"--deadline-remaining-seconds (\d+)", script).group(1))
        wait = int(re.search(r"seq (\d+)", script).group(1))
        grace = group["template"]["spec"]["terminationGracePeriodSeconds"]
        assert graceful < deadline < grace and wait < grace, (graceful, deadline, wait, grace)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_metrics(overlay):
    config = embedded_serve_config(overlay)
    head = head_group(overlay)
    ports = {p["name"]: p["containerPort"] for p in ray_container(head)["ports"]}
    assert ports["serve"] == config["http_options"]["port"] == 8000
    assert ports["dashboard"] == 8265 and ports["metrics"] == 8080 and ports["gcs-server"] == 6379
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    for group in [head, *worker_groups(overlay)]:
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    for group in worker_groups(overlay):
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        assert ports["serve"] == 8000 and ports["metrics"] == 8080
    assert config["proxy_location"] == "EveryNode", "KubeRay's worker readiness probe needs a proxy on the worker"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_left_to_kuberay(overlay):
    """KubeRay submits serveConfigV2 only once the head pod is ready, so a head probe on the app
    (/v2/health/ready on 8000) would deadlock, and a liveness probe there would restart the whole
    cluster on an app redeploy. Ray containers declare no probes: KubeRay injects its own."""
    for name, template in pod_templates(overlay):
        container = template["spec"]["containers"][0]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert probe not in container, f"{name}: {probe} replaces KubeRay's injected one (k8s/README.md)"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_volumes(overlay):
    config = embedded_serve_config(overlay)
    voices_dir = app(config)["args"]["server"]["voices_dir"]
    model = app(config)["args"]["engine"]["model"]
    pvcs = {d["metadata"]["name"]: d for d in docs(overlay) if d["kind"] == "PersistentVolumeClaim"}
    voices_pvc = pvcs["csm-voices"]
    assert voices_pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, template in pod_templates(overlay):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert volumes[mounts[voices_dir]["name"]]["persistentVolumeClaim"]["claimName"] == "csm-voices", name
        assert not mounts[voices_dir].get("readOnly")
    if overlay == "cpu":
        return
    for group in worker_groups(overlay):
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        [mount] = [m for m in ray_container(group)["volumeMounts"] if Path(model).is_relative_to(m["mountPath"])]
        assert mount["readOnly"] is True
        claim = volumes[mount["name"]]["persistentVolumeClaim"]
        assert claim == {"claimName": "csm-models", "readOnly": True}


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_name_no_registry_host(overlay):
    images = [
        c["image"]
        for _, template in pod_templates(overlay)
        for c in template["spec"].get("containers", []) + template["spec"].get("initContainers", [])
    ]
    autoscaler_image = rayservice(overlay)["spec"]["rayClusterConfig"].get("autoscalerOptions", {}).get("image")
    images += [autoscaler_image] if autoscaler_image else []
    for image in images:
        first = image.split("/")[0]
        assert "/" not in image or not ("." in first or ":" in first or first == "localhost"), image
        assert image.split(":")[0] == "csm-serve", image


@needs_kubectl
def test_ray_version_matches_the_pinned_ray():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    [pin] = [d for d in pyproject["project"]["dependencies"] if d.startswith("ray[")]
    pinned = pin.split("==")[1]
    for overlay in OVERLAYS:
        assert rayservice(overlay)["spec"]["rayClusterConfig"]["rayVersion"] == pinned
