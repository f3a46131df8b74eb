"""cluster/: the Ray cluster launcher YAMLs against Ray's own ray-schema.json, the KubeRay manifests'
required fields, one Ray version everywhere (pyproject, images, manifests), serveConfigV2 equal to
serve/config.yaml, and the RayJob's entrypoint pointing at files that exist.

Every failure names the file and the field that is off.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
SERVE_CONFIG = REPO / "serve" / "config.yaml"

LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
# file name → kind, and where the RayClusterSpec lives in it
KUBERAY_MANIFESTS = {
    "raycluster.yaml": ("RayCluster", ("spec",)),
    "rayjob-synthesize.yaml": ("RayJob", ("spec", "rayClusterSpec")),
    "rayservice.yaml": ("RayService", ("spec", "rayClusterConfig")),
}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}
OVERWRITE_CMD = "ray.io/overwrite-container-cmd"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def pyproject_ray_version() -> str:
    """The Ray release pyproject pins, as an image tag spells it: `ray[...]==2.60.*` → "2.60.0"."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [d for d in project["dependencies"] if re.match(r"ray(\[[^\]]*\])?\s*==", d)]
    assert len(specs) == 1, f"pyproject.toml: expected one `ray==...` dependency, found {specs}"
    match = re.search(r"==\s*(\d+)\.(\d+)(?:\.(\d+|\*))?\s*$", specs[0])
    assert match, f"pyproject.toml: cannot read a Ray version from {specs[0]!r}"
    major, minor, patch = match.groups()
    return f"{major}.{minor}.{0 if patch in (None, '*') else patch}"


RAY_VERSION = pyproject_ray_version()


def load(path: Path):
    return yaml.safe_load(path.read_text())


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def dig(document, keys, where):
    for key in keys:
        assert isinstance(document, dict) and key in document, f"{where}: missing `{'.'.join(keys)}`"
        document = document[key]
    return document


def check_image(image, where: str) -> None:
    """A rayproject/ray-style reference whose tag is the pyproject Ray version (plus a suffix)."""
    assert isinstance(image, str) and ":" in image, f"{where}: image {image!r} has no tag"
    tag = image.rsplit(":", 1)[1]
    assert tag == RAY_VERSION or tag.startswith(RAY_VERSION + "-"), (
        f"{where}: image {image!r} is not pinned to Ray {RAY_VERSION} (pyproject.toml)"
    )


DOCKERFILE = CLUSTER / "Dockerfile"
# The vf3d image every launcher node and KubeRay pod runs: one repository, tags <ray>-py311[-gpu].
PROJECT_IMAGE_REPO = re.compile(r"^(?:[a-z0-9.-]+(?::\d+)?/)*vf3d$")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cluster/Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, arguments in dockerfile_instructions():
        if instruction == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", arguments):
                env[key] = value
    return env


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^(\w+)=(\S+)", a)[0] for i, a in dockerfile_instructions() if i == "ARG" and "=" in a)


def check_project_image(image: str, where: str) -> None:
    """The vf3d image (cluster/Dockerfile), not a stock Ray image that would pip-install at boot."""
    check_image(image, where)
    repo = image.rsplit(":", 1)[0]
    assert PROJECT_IMAGE_REPO.match(repo), (
        f"{where}: image {image!r} is not the vf3d image (REGISTRY/vf3d:<ray>-py311[-gpu], cluster/Dockerfile)"
    )


def launcher_gpus(node_type: dict) -> int:
    return int(node_type.get("resources", {}).get("GPU", 0))


def cluster_specs():
    """(file name, kind, manifest, RayClusterSpec) for every KubeRay manifest."""
    for name, (kind, keys) in KUBERAY_MANIFESTS.items():
        manifest = load(KUBERAY / name)
        yield name, kind, manifest, dig(manifest, keys, f"cluster/kuberay/{name}")


def groups(spec: dict):
    """(label, group spec) for the head group and every worker group."""
    yield "headGroupSpec", spec["headGroupSpec"]
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        yield f"workerGroupSpecs[{i}] ({group.get('groupName', '?')})", group


def gpu_count(container: dict) -> int:
    resources = container.get("resources") or {}
    return int((resources.get("limits") or {}).get("nvidia.com/gpu", 0))


def load_sync_script():
    spec = importlib.util.spec_from_file_location("sync_rayservice", CLUSTER / "sync_rayservice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# every YAML under cluster/ is covered, and the Ray version agrees with what is installed
# ---------------------------------------------------------------------------------------------


def test_every_cluster_yaml_is_validated_here():
    known = {f"cluster/{n}" for n in LAUNCHER_CONFIGS} | {f"cluster/kuberay/{n}" for n in KUBERAY_MANIFESTS}
    found = {rel(p) for p in CLUSTER.rglob("*.y*ml")}
    assert found == known, (
        f"cluster/: YAML files without a test here: {sorted(found - known)}; listed here but missing: {sorted(known - found)}"
    )


def test_installed_ray_is_the_pyproject_version():
    import ray

    major_minor = ".".join(RAY_VERSION.split(".")[:2])
    assert ray.__version__.startswith(major_minor + "."), f".venv has ray {ray.__version__}, pyproject.toml pins {major_minor}.*"


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher: cluster/aws.yaml, cluster/gcp.yaml
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_validates_against_rays_schema(name):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = load(CLUSTER / name)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    try:
        jsonschema.validate(config, schema)
    except jsonschema.ValidationError as error:
        path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        pytest.fail(f"cluster/{name}: `{path}` does not match Ray's ray-schema.json: {error.message}")
    # What `ray up` does before talking to the cloud: merge the provider's defaults, then Ray's own
    # validation (schema again, head_node_type among the node types, sum of min_workers <= max_workers).
    try:
        validate_config(prepare_config(config))
    except Exception as error:  # noqa: BLE001 - report whatever Ray rejects, with the file name
        pytest.fail(f"cluster/{name}: Ray's validate_config rejects it: {type(error).__name__}: {error}")


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_node_types(name):
    config = load(CLUSTER / name)
    where = f"cluster/{name}"
    types = config["available_node_types"]
    head = config.get("head_node_type")
    assert head in types, f"{where}: head_node_type {head!r} is not one of available_node_types {sorted(types)}"
    assert types[head]["resources"].get("CPU") == 0, (
        f"{where}: available_node_types.{head}.resources must set CPU: 0 so no task or actor runs on the head"
    )
    assert launcher_gpus(types[head]) == 0, f"{where}: available_node_types.{head} (the head) must not offer GPUs"
    for type_name, node_type in types.items():
        if type_name == head:
            continue
        low, high = node_type.get("min_workers", 0), node_type.get("max_workers")
        assert isinstance(high, int), f"{where}: available_node_types.{type_name}.max_workers must be set"
        assert 0 <= low <= high, f"{where}: available_node_types.{type_name}: min_workers {low} > max_workers {high}"
        assert high <= config["max_workers"], f"{where}: available_node_types.{type_name}.max_workers {high} exceeds the global max_workers"
    workers = {n: t for n, t in types.items() if n != head}
    gpus = sorted(launcher_gpus(t) for t in workers.values())
    assert gpus[-1] >= 8, f"{where}: no 8-GPU worker type (GPUs per type: {gpus})"
    assert 1 in gpus, f"{where}: no single-GPU worker type (GPUs per type: {gpus})"
    assert 0 in gpus, f"{where}: no CPU-only worker type for mask_pool / Ray Data CPU stages"
    assert config.get("idle_timeout_minutes", 0) > 0, f"{where}: idle_timeout_minutes must be set (> 0)"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_images_are_pinned_to_the_pyproject_ray_version(name):
    config = load(CLUSTER / name)
    where = f"cluster/{name}"
    docker = config.get("docker") or {}
    assert docker.get("image"), f"{where}: docker.image must be set (every node runs the Ray image)"
    assert docker.get("container_name"), f"{where}: docker.container_name must be set"
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            check_image(docker[key], f"{where}: docker.{key}")
    head = config["head_node_type"]
    for type_name, node_type in config["available_node_types"].items():
        default = docker.get("head_image" if type_name == head else "worker_image", docker["image"])
        image = (node_type.get("docker") or {}).get("worker_image", default)
        check_image(image, f"{where}: available_node_types.{type_name} (docker image)")
        wants_gpu_image = launcher_gpus(node_type) > 0
        assert image.endswith("-gpu") == wants_gpu_image, (
            f"{where}: available_node_types.{type_name} has {launcher_gpus(node_type)} GPUs but runs {image!r}"
        )


# Packages a launcher may pip-install at boot: the head's cloud SDK for the autoscaler, nothing else.
BOOT_PIP_ALLOWED = {"boto3", "google-api-python-client"}


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_installs_nothing_of_vf3d_at_boot(name):
    """The image holds vf3d and torch: no node pip-installs the project, torch or the pins at boot."""
    config = load(CLUSTER / name)
    where = f"cluster/{name}"
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        for node_type, commands in [("", config.get(key) or [])] + [
            (f"available_node_types.{t}.", n.get(key) or []) for t, n in config["available_node_types"].items()
        ]:
            for command in commands:
                for install in re.findall(r"pip3? install ([^;&|]*)", command):
                    packages = {re.split(r"[<>=\[ ]", w.strip("'\""))[0] for w in install.split() if not w.startswith("-")}
                    assert packages <= BOOT_PIP_ALLOWED, (
                        f"{where}: {node_type}{key} pip-installs {sorted(packages - BOOT_PIP_ALLOWED)} at boot: "
                        "that belongs in the image (cluster/Dockerfile)"
                    )
    assert not config.get("file_mounts"), f"{where}: file_mounts uploads a tree at boot; the code is in the image"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_holds_no_credentials(name):
    config = load(CLUSTER / name)
    text = (CLUSTER / name).read_text()
    where = f"cluster/{name}"
    assert "ssh_private_key" not in (config.get("auth") or {}), f"{where}: auth.ssh_private_key must not be set"
    for key in ("gcp_credentials", "aws_credentials"):
        assert key not in config["provider"], f"{where}: provider.{key} must not be set (use local credentials)"
    assert not re.search(r"PRIVATE KEY|AKIA[0-9A-Z]{16}|aws_secret_access_key", text), f"{where}: looks like a credential"


# ---------------------------------------------------------------------------------------------
# KubeRay: cluster/kuberay/*.yaml
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(KUBERAY_MANIFESTS))
def test_kuberay_manifest_required_fields(name):
    kind, keys = KUBERAY_MANIFESTS[name]
    manifest = load(KUBERAY / name)
    where = f"cluster/kuberay/{name}"
    assert manifest.get("apiVersion") == "ray.io/v1", f"{where}: apiVersion must be ray.io/v1"
    assert manifest.get("kind") == kind, f"{where}: kind must be {kind}"
    assert (manifest.get("metadata") or {}).get("name"), f"{where}: metadata.name must be set"
    spec = dig(manifest, keys, where)
    field = ".".join(keys)
    assert spec.get("rayVersion") == RAY_VERSION, (
        f"{where}: {field}.rayVersion is {spec.get('rayVersion')!r}, pyproject.toml pins Ray {RAY_VERSION}"
    )
    assert spec.get("enableInTreeAutoscaling") is True, f"{where}: {field}.enableInTreeAutoscaling must be true"
    options = spec.get("autoscalerOptions") or {}
    assert isinstance(options.get("idleTimeoutSeconds"), int) and options["idleTimeoutSeconds"] > 0, (
        f"{where}: {field}.autoscalerOptions.idleTimeoutSeconds must be a positive integer"
    )
    assert options.get("upscalingMode", "Default") in UPSCALING_MODES, (
        f"{where}: {field}.autoscalerOptions.upscalingMode must be one of {sorted(UPSCALING_MODES)}"
    )

    head = dig(spec, ("headGroupSpec",), f"{where}: {field}")
    start = head.get("rayStartParams") or {}
    assert start.get("num-cpus") == "0", f'{where}: {field}.headGroupSpec.rayStartParams.num-cpus must be "0"'
    assert start.get("dashboard-host") == "0.0.0.0", f"{where}: {field}.headGroupSpec.rayStartParams.dashboard-host must be 0.0.0.0"

    workers = spec.get("workerGroupSpecs")
    assert workers, f"{where}: {field}.workerGroupSpecs must list worker groups"
    names = [g.get("groupName") for g in workers]
    assert len(set(names)) == len(names), f"{where}: {field}.workerGroupSpecs: groupName repeats: {names}"
    for label, group in groups(spec):
        at = f"{where}: {field}.{label}"
        params = group.get("rayStartParams")
        assert isinstance(params, dict), f"{at}.rayStartParams must be a map"
        for key, value in params.items():
            assert isinstance(value, str), f"{at}.rayStartParams.{key} must be a string (KubeRay's map[string]string)"
        containers = dig(group, ("template", "spec", "containers"), at)
        assert containers, f"{at}.template.spec.containers is empty"
        for i, container in enumerate(containers + (group["template"]["spec"].get("initContainers") or [])):
            assert container.get("name"), f"{at}: container {i} has no name"
            assert container.get("image"), f"{at}: container {container.get('name')} has no image"
            check_image(container["image"], f"{at}: container {container['name']}")
        gpus = gpu_count(containers[0])
        assert containers[0]["image"].endswith("-gpu") == (gpus > 0), (
            f"{at}: {gpus} nvidia.com/gpu but image {containers[0]['image']!r} (GPU groups: the -gpu image; others: the CPU one)"
        )
        if label == "headGroupSpec":
            assert gpus == 0, f"{at}: the head must not ask for GPUs"
            continue
        assert group.get("groupName"), f"{at}: groupName must be set"
        low, high = group.get("minReplicas"), group.get("maxReplicas")
        assert isinstance(low, int) and isinstance(high, int), f"{at}: minReplicas and maxReplicas must be integers"
        assert 0 <= low <= high, f"{at}: minReplicas {low} > maxReplicas {high}"
        replicas = group.get("replicas", low)
        assert low <= replicas <= high, f"{at}: replicas {replicas} outside [minReplicas {low}, maxReplicas {high}]"
    assert any(gpu_count(g["template"]["spec"]["containers"][0]) > 0 for g in workers), (
        f"{where}: {field}.workerGroupSpecs has no GPU group (nvidia.com/gpu limits)"
    )


@pytest.mark.parametrize("name", list(KUBERAY_MANIFESTS))
def test_kuberay_container_commands_end_in_the_generated_ray_start(name):
    """Containers that set their own command need the overwrite annotation, ulimit and `ray start`."""
    for manifest_name, _, manifest, spec in cluster_specs():
        if manifest_name != name:
            continue
        where = f"cluster/kuberay/{name}"
        for label, group in groups(spec):
            container = group["template"]["spec"]["containers"][0]
            if not container.get("command") and not container.get("args"):
                continue
            annotations = (manifest.get("metadata") or {}).get("annotations") or {}
            assert annotations.get(OVERWRITE_CMD) == "true", (
                f'{where}: {label} sets command/args, so metadata.annotations.{OVERWRITE_CMD} must be "true"'
            )
            script = " ".join(container.get("command", []) + container.get("args", []))
            assert "ulimit -n 65536" in script and script.rstrip().endswith("$KUBERAY_GEN_RAY_START_CMD"), (
                f"{where}: {label}: args must run `ulimit -n 65536` and end with $KUBERAY_GEN_RAY_START_CMD"
            )


@pytest.mark.parametrize("name", list(KUBERAY_MANIFESTS))
def test_kuberay_secrets_come_from_kubernetes_secrets(name):
    """No key, token or password is written into a manifest; VF3D_API_KEY comes from a secretKeyRef."""
    for manifest_name, _, _, spec in cluster_specs():
        if manifest_name != name:
            continue
        where = f"cluster/kuberay/{name}"
        for label, group in groups(spec):
            for container in group["template"]["spec"]["containers"]:
                env = {e["name"]: e for e in container.get("env") or []}
                for var, entry in env.items():
                    if re.search(r"KEY|TOKEN|SECRET|PASSWORD", var):
                        assert "value" not in entry, f"{where}: {label}: env {var} has a literal value; use valueFrom.secretKeyRef"
                ref = ((env.get("VF3D_API_KEY") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
                assert ref.get("name") and ref.get("key"), (
                    f"{where}: {label}: container {container['name']} needs env VF3D_API_KEY from valueFrom.secretKeyRef"
                )
                if name == "rayservice.yaml":
                    assert not ref.get("optional", False), (
                        f"{where}: {label}: the endpoint's VF3D_API_KEY secretKeyRef must not be optional"
                    )


def test_rayjob_runs_synthesis_on_the_raycluster_spec():
    where = "cluster/kuberay/rayjob-synthesize.yaml"
    job = load(KUBERAY / "rayjob-synthesize.yaml")
    cluster = load(KUBERAY / "raycluster.yaml")
    spec = job["spec"]
    assert spec.get("shutdownAfterJobFinishes") is True, f"{where}: spec.shutdownAfterJobFinishes must be true"
    ttl = spec.get("ttlSecondsAfterFinished")
    assert isinstance(ttl, int) and ttl >= 0, f"{where}: spec.ttlSecondsAfterFinished must be a non-negative integer"
    assert spec.get("submissionMode", "K8sJobMode") in {"K8sJobMode", "HTTPMode", "InteractiveMode"}, (
        f"{where}: spec.submissionMode {spec.get('submissionMode')!r} is not a KubeRay submission mode"
    )
    assert spec["rayClusterSpec"] == cluster["spec"], (
        f"{where}: spec.rayClusterSpec differs from cluster/kuberay/raycluster.yaml's spec (keep the groups the same)"
    )
    assert (job["metadata"].get("annotations") or {}) == (cluster["metadata"].get("annotations") or {}), (
        f"{where}: metadata.annotations differ from cluster/kuberay/raycluster.yaml's"
    )


def test_rayjob_runtime_env_is_valid_and_runs_the_images_tree():
    from ray.runtime_env import RuntimeEnv

    where = "cluster/kuberay/rayjob-synthesize.yaml"
    spec = load(KUBERAY / "rayjob-synthesize.yaml")["spec"]
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "{}")
    assert isinstance(runtime_env, dict), f"{where}: spec.runtimeEnvYAML must be a YAML mapping (as a string)"
    try:
        # working_dir is a path inside the image (checked below); RuntimeEnv would look for it here.
        RuntimeEnv(**{key: value for key, value in runtime_env.items() if key != "working_dir"})
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"{where}: spec.runtimeEnvYAML is not a valid Ray runtime env: {error}")
    tree = dockerfile_env()["VF3D_TREE"]
    assert runtime_env.get("working_dir") == tree, (
        f"{where}: spec.runtimeEnvYAML working_dir {runtime_env.get('working_dir')!r} must be the image's tree {tree!r} "
        "(cluster/Dockerfile VF3D_TREE: the submitter pod runs the head's image)"
    )


def rayjob_entrypoint():
    where = "cluster/kuberay/rayjob-synthesize.yaml"
    argv = shlex.split(load(KUBERAY / "rayjob-synthesize.yaml")["spec"]["entrypoint"])
    assert argv[0] == "python" and len(argv) >= 2, f"{where}: spec.entrypoint must be `python jobs/<stage>.py ...`"
    assert "--config" in argv, f"{where}: spec.entrypoint must pass --config jobs/configs/<file>.yaml"
    return argv[1], argv[argv.index("--config") + 1]


def test_rayjob_entrypoint_files_exist():
    where = "cluster/kuberay/rayjob-synthesize.yaml"
    script, config = rayjob_entrypoint()
    assert re.fullmatch(r"jobs/[a-z_]+\.py", script), f"{where}: spec.entrypoint script {script!r} is not jobs/<stage>.py"
    assert re.fullmatch(r"jobs/configs/[a-z-]+-(debug|cluster)\.yaml", config), (
        f"{where}: spec.entrypoint config {config!r} is not jobs/configs/<stage>-debug|cluster.yaml"
    )
    assert (REPO / script).is_file(), f"{where}: spec.entrypoint runs {script}, which does not exist in the repository"
    assert (REPO / config).is_file(), f"{where}: spec.entrypoint passes --config {config}, which does not exist in the repository"


def _absolute_paths(value):
    if isinstance(value, str) and value.startswith("/"):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _absolute_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _absolute_paths(item)


def _mounted_everywhere(spec: dict) -> set[str]:
    """Mount paths every Ray pod of a RayClusterSpec has."""
    return set.intersection(
        *(
            {m["mountPath"].rstrip("/") for m in group["template"]["spec"]["containers"][0].get("volumeMounts", [])}
            for _, group in groups(spec)
        )
    )


def _launcher_mounts(config: dict) -> set[str]:
    """Container paths the launcher's `docker run -v HOST:CONTAINER` options mount on every node."""
    options = " ".join((config.get("docker") or {}).get("run_options") or [])
    return {m.rstrip("/") for m in re.findall(r"-v\s+\S+?:(/[^\s:]+)", options)}


def _check_paths_on(config_file: Path, mounts: set[str], where: str) -> None:
    for path in _absolute_paths(load(config_file)):
        assert any(path == m or path.startswith(m + "/") for m in mounts), (
            f"{rel(config_file)}: path {path!r} is on no volume that every node of {where} mounts (mounted everywhere: {sorted(mounts)})"
        )


def test_rayjob_config_paths_lie_on_the_pods_volumes():
    """Every absolute path in the RayJob's config must be on a volume every Ray pod mounts."""
    _, config = rayjob_entrypoint()
    if not (REPO / config).is_file():
        pytest.skip(f"{config} does not exist yet (test_rayjob_entrypoint_files_exist reports it)")
    spec = load(KUBERAY / "rayjob-synthesize.yaml")["spec"]["rayClusterSpec"]
    _check_paths_on(REPO / config, _mounted_everywhere(spec), "cluster/kuberay/rayjob-synthesize.yaml")


CLUSTER_JOB_CONFIGS = sorted((REPO / "jobs" / "configs").glob("*-cluster.yaml"))


@pytest.mark.parametrize("job_config", CLUSTER_JOB_CONFIGS, ids=lambda p: p.name)
def test_cluster_job_config_paths_lie_on_shared_storage(job_config):
    """`vf3d submit` of any *-cluster.yaml job to these clusters finds its paths on every node."""
    spec = load(KUBERAY / "raycluster.yaml")["spec"]
    _check_paths_on(job_config, _mounted_everywhere(spec), "cluster/kuberay/raycluster.yaml")
    for name in LAUNCHER_CONFIGS:
        _check_paths_on(job_config, _launcher_mounts(load(CLUSTER / name)), f"cluster/{name}")


def test_rayservice_serve_config_is_serve_config_yaml():
    from ray.serve.schema import ServeDeploySchema

    where = "cluster/kuberay/rayservice.yaml"
    text = load(KUBERAY / "rayservice.yaml")["spec"].get("serveConfigV2")
    assert isinstance(text, str), f"{where}: spec.serveConfigV2 must be a YAML block string"
    embedded = yaml.safe_load(text)
    assert embedded == load(SERVE_CONFIG), (
        f"{where}: spec.serveConfigV2 differs from serve/config.yaml: run `python cluster/sync_rayservice.py`"
    )
    try:
        ServeDeploySchema.model_validate(embedded)
    except Exception as error:  # noqa: BLE001
        pytest.fail(f"{where}: spec.serveConfigV2 is not a valid Serve config: {error}")
    # Verbatim, comments included: the sync script leaves the file as it is.
    current = (KUBERAY / "rayservice.yaml").read_text()
    assert load_sync_script().render(current, SERVE_CONFIG.read_text()) == current, (
        f"{where}: spec.serveConfigV2 is not serve/config.yaml verbatim: run `python cluster/sync_rayservice.py`"
    )


def test_rayservice_mounts_the_model_directory_on_every_pod():
    where = "cluster/kuberay/rayservice.yaml"
    manifest = load(KUBERAY / "rayservice.yaml")
    models = [app["args"]["model"] for app in yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]]
    for label, group in groups(manifest["spec"]["rayClusterConfig"]):
        pod = group["template"]["spec"]
        claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"].rstrip("/"): m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
        for model in models:
            on = [p for p in mounts if model == p or model.startswith(p + "/")]
            assert on and mounts[on[0]] in claims, (
                f"{where}: rayClusterConfig.{label}: serveConfigV2's model {model!r} is not on a "
                f"PersistentVolumeClaim mounted in the pod (mounts: {sorted(mounts)})"
            )


def test_sync_script_rewrites_only_the_block(tmp_path):
    sync = load_sync_script()
    manifest = "a: 1\nspec:\n  serveConfigV2: |\n    old: 1\n\n    older: 2\n\n  # kept\n  rayClusterConfig: {x: 1}\n"
    out = sync.render(manifest, "# comment\nproxy_location: EveryNode\n\napplications: []\n")
    assert out == (
        "a: 1\nspec:\n  serveConfigV2: |\n    # comment\n    proxy_location: EveryNode\n\n"
        "    applications: []\n\n  # kept\n  rayClusterConfig: {x: 1}\n"
    )
    assert sync.render(out, "# comment\nproxy_location: EveryNode\n\napplications: []\n") == out


# ---------------------------------------------------------------------------------------------
# The image: cluster/Dockerfile, and every launcher node type and KubeRay pod running it
# ---------------------------------------------------------------------------------------------


def test_dockerfile_builds_from_the_pinned_ray_image():
    instructions = dockerfile_instructions()
    froms = [a for i, a in instructions if i == "FROM"]
    assert len(froms) == 1, f"cluster/Dockerfile: expected one FROM, found {froms}"
    base = dockerfile_args().get("BASE_IMAGE")
    assert froms[0].split()[0] == "${BASE_IMAGE}" and base, (
        "cluster/Dockerfile: FROM ${BASE_IMAGE}, with ARG BASE_IMAGE=<Ray image> before it"
    )
    assert base.startswith("rayproject/ray:"), f"cluster/Dockerfile: BASE_IMAGE {base!r} is not a rayproject/ray image"
    check_image(base, "cluster/Dockerfile: ARG BASE_IMAGE")
    assert base.endswith("-py311-gpu"), f"cluster/Dockerfile: the default BASE_IMAGE {base!r} must be Ray's py311 CUDA image"


def test_dockerfile_installs_the_project_with_its_pins_and_cuda_torch():
    runs = " ".join(a for i, a in dockerfile_instructions() if i == "RUN")
    installs = re.findall(r"pip install ([^&;]*)", runs)
    assert any("-c constraints.txt" in c and re.search(r"""["']?\.\[assets\]""", c) for c in installs), (
        f"cluster/Dockerfile: no `pip install -c constraints.txt .[assets]` (pip installs: {installs})"
    )
    torch_installs = [c for c in installs if re.search(r"\btorch\b", c)]
    assert torch_installs and all("-c constraints.txt" in c and "TORCH_INDEX_URL" in c for c in torch_installs), (
        f"cluster/Dockerfile: torch must come from the CUDA index (TORCH_INDEX_URL) under constraints.txt: {torch_installs}"
    )
    index = dockerfile_args().get("TORCH_INDEX_URL", "")
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), (
        f"cluster/Dockerfile: TORCH_INDEX_URL {index!r} is not a CUDA wheel index"
    )


def test_dockerfile_has_egl_and_the_graphics_capability():
    runs = " ".join(a for i, a in dockerfile_instructions() if i == "RUN")
    apt = " ".join(re.findall(r"apt-get install ([^&;]*)", runs))
    for library in ("libegl1", "libgl1", "libgles2", "libglvnd0", "libegl-mesa0"):
        assert re.search(rf"(^|\s){re.escape(library)}(\s|$)", apt), f"cluster/Dockerfile: apt-get install lacks {library} (headless EGL)"
    capabilities = set(dockerfile_env().get("NVIDIA_DRIVER_CAPABILITIES", "").split(","))
    assert {"graphics", "compute", "utility"} <= capabilities or "all" in capabilities, (
        f"cluster/Dockerfile: NVIDIA_DRIVER_CAPABILITIES {sorted(capabilities)} must include graphics (EGL), compute, utility"
    )


def test_dockerfile_runs_as_the_non_root_ray_user():
    users = [a.strip() for i, a in dockerfile_instructions() if i == "USER"]
    assert users and users[-1] not in ("root", "0"), f"cluster/Dockerfile: the last USER is {users[-1:] or 'unset'}; run as ray (uid 1000)"
    assert dockerfile_env().get("VF3D_TREE") and dockerfile_env().get("PYTHONPATH") == dockerfile_env()["VF3D_TREE"], (
        "cluster/Dockerfile: PYTHONPATH must be the baked tree (VF3D_TREE), where serve.app and jobs/ live"
    )


def test_dockerignore_keeps_venvs_outputs_and_git_out():
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    for entry in (".git", ".venv", "demo-output", "job-output", "bench-results"):
        assert entry in ignored, f".dockerignore: {entry} would be sent to the image build"


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_node_types_run_the_project_image(name):
    config = load(CLUSTER / name)
    docker = config["docker"]
    head = config["head_node_type"]
    for type_name, node_type in config["available_node_types"].items():
        default = docker.get("head_image" if type_name == head else "worker_image", docker["image"])
        image = (node_type.get("docker") or {}).get("worker_image", default)
        check_project_image(image, f"cluster/{name}: available_node_types.{type_name}")


def test_aws_gpu_nodes_set_nccl_over_efa():
    config = load(CLUSTER / "aws.yaml")
    for type_name, node_type in config["available_node_types"].items():
        if launcher_gpus(node_type) < 8:
            continue
        options = " ".join((node_type.get("docker") or {}).get("worker_run_options") or [])
        for variable in ("FI_PROVIDER=efa", "FI_EFA_USE_DEVICE_RDMA=1", "NCCL_SOCKET_IFNAME="):
            assert f"-e {variable}" in options, (
                f"cluster/aws.yaml: available_node_types.{type_name}.docker.worker_run_options lacks -e {variable}"
            )


@pytest.mark.parametrize("name", list(KUBERAY_MANIFESTS))
def test_kuberay_pods_run_the_project_image_and_gpu_pods_land_on_gpu_nodes(name):
    for manifest_name, _, _, spec in cluster_specs():
        if manifest_name != name:
            continue
        where = f"cluster/kuberay/{name}"
        for label, group in groups(spec):
            pod = group["template"]["spec"]
            for container in pod["containers"]:
                check_project_image(container["image"], f"{where}: {label}: container {container['name']}")
                script = " ".join(container.get("command", []) + container.get("args", []))
                assert "pip install" not in script and "urlopen" not in script, (
                    f"{where}: {label}: the start command installs or fetches code at boot"
                )
            gpus = gpu_count(pod["containers"][0])
            if gpus == 0:
                continue
            requests = (pod["containers"][0].get("resources") or {}).get("requests") or {}
            assert int(requests.get("nvidia.com/gpu", 0)) == gpus, f"{where}: {label}: nvidia.com/gpu requests must equal the limits"
            tolerations = pod.get("tolerations") or []
            assert any(t.get("key") == "nvidia.com/gpu" and t.get("operator") in ("Exists", "Equal") for t in tolerations), (
                f"{where}: {label}: a GPU group needs a toleration for the nvidia.com/gpu taint"
            )
            assert pod.get("nodeSelector") or (pod.get("affinity") or {}).get("nodeAffinity"), (
                f"{where}: {label}: a GPU group needs a nodeSelector (or node affinity) for GPU nodes"
            )


def test_kuberay_multi_gpu_groups_set_nccl_over_efa():
    for name, _, _, spec in cluster_specs():
        for label, group in groups(spec):
            container = group["template"]["spec"]["containers"][0]
            if gpu_count(container) < 8:
                continue
            env = {e["name"]: e.get("value") for e in container.get("env") or []}
            assert env.get("FI_PROVIDER") == "efa" and env.get("NCCL_SOCKET_IFNAME"), (
                f"cluster/kuberay/{name}: {label}: an 8-GPU group (multi-node training) needs FI_PROVIDER=efa and NCCL_SOCKET_IFNAME"
            )


def test_rayjob_has_retry_and_deadline_limits():
    where = "cluster/kuberay/rayjob-synthesize.yaml"
    spec = load(KUBERAY / "rayjob-synthesize.yaml")["spec"]
    for field in ("backoffLimit", "activeDeadlineSeconds"):
        value = spec.get(field)
        assert isinstance(value, int) and value >= (0 if field == "backoffLimit" else 1), f"{where}: spec.{field} must be set (an integer)"
    submitter = (spec.get("submitterConfig") or {}).get("backoffLimit")
    assert isinstance(submitter, int) and submitter >= 0, f"{where}: spec.submitterConfig.backoffLimit must be set"
    assert spec.get("submissionMode") == "K8sJobMode", f"{where}: spec.submissionMode must be K8sJobMode (a submitter Job that retries)"
