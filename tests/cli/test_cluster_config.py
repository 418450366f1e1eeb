"""cluster.yaml, k8s/rayjob.yaml and k8s/raycronjob.yaml are valid, and fit what jobs/configs/nightly.yaml asks for.

cluster.yaml goes through the same preparation and validation as `ray up` before it talks to
AWS: defaults merged, then checked against the launcher's JSON schema that the ray package
ships. No RayJob CRD schema ships offline, so the manifest gets a hand-written check of the
fields KubeRay needs. The RayCronJob gets the same check on its job template, and is validated
against KubeRay 1.7.0's own schema, cut down in tests/cli/schemas, with unknown fields rejected as
`kubectl apply` does; its job template must equal the RayJob's spec, which that schema then
covers too (in that release it is the RayJob CRD's spec schema). Its schedule, and every crontab entry the docs
show, must be one run a night: no cron parser is installed, so the check takes only the form this project ships,
`minute hour * * *`, with the time in range and the time the docs state.
"""

from __future__ import annotations

import copy
import json
import re
import time
import zoneinfo
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from helpers import REPO
from ray.autoscaler._private.util import prepare_config, validate_config

from nlp_tasks.config import load_config
from nlp_tasks.driver.compute import Cluster, group_by_model, resolve_pools

CLUSTER = yaml.safe_load((REPO / "cluster.yaml").read_text())
RAYJOB_DOCS = list(yaml.safe_load_all((REPO / "k8s" / "rayjob.yaml").read_text()))
RAYCRONJOB_DOCS = list(yaml.safe_load_all((REPO / "k8s" / "raycronjob.yaml").read_text()))
RAYCRONJOB_SCHEMA = yaml.safe_load((REPO / "tests" / "cli" / "schemas" / "kuberay-1.7.0-raycronjob.yaml").read_text())
MAX_RAYCRONJOB_NAME = 36
"""KubeRay 1.7's limit: each night's RayJob is named <name>-<minute> and must fit the RayJob's own limit."""
NIGHTLY = "jobs/configs/nightly.yaml"
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])
PROJECT_VERSION = re.search(r'^version = "(.+)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)


def cpus(quantity: str | int) -> float:
    """A Kubernetes CPU quantity ("4", "3500m") in CPUs."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def launcher_check(config: dict) -> None:
    """What `ray up` does to a config before contacting the cloud; raises on an invalid one."""
    validate_config(prepare_config(copy.deepcopy(config)))


def nightly_pools(worker_cpus: float, worker_gpus: float, workers: int) -> list:
    """The nightly job's pools as the job sizes them on a cluster grown to `workers` GPU workers (weights of
    hub checkpoints are unknown offline, so every model counts as a large one: a whole GPU per actor)."""
    config = load_config(REPO / NIGHTLY)
    groups = group_by_model(config.tasks)
    cluster = Cluster(cpus=workers * worker_cpus, gpus=workers * worker_gpus, memory=0, nodes=workers,
                      fixed_size=False)
    return resolve_pools(config, groups, cluster, [0] * len(groups))


def fits(pools: list, worker_cpus: float, worker_gpus: float, workers: int) -> None:
    """Every actor fits a worker, and every pool's smallest size fits the cluster at once."""
    assert max(pool.num_cpus_per_actor for pool in pools) <= worker_cpus
    assert max(pool.num_gpus_per_actor for pool in pools) <= worker_gpus
    needed = sum(pool.min_actors * pool.num_gpus_per_actor for pool in pools)
    assert needed <= workers * worker_gpus, "the job would wait forever"


def test_cluster_yaml_passes_the_launchers_schema_as_written_and_as_prepared():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(CLUSTER, schema)
    launcher_check(CLUSTER)


@pytest.mark.parametrize("mutate, message", [
    pytest.param(lambda c: c.update(idle_timeout_minute=5), "'idle_timeout_minute' was unexpected",
                 id="top-level-typo"),
    pytest.param(lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=0), "'min_worker' was unexpected",
                 id="node-type-typo"),
    pytest.param(lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU="1"),
                 "'1' is not of type 'integer'", id="string-resource"),
    pytest.param(lambda c: c.update(head_node_type="ray.head.default"), "head_node_type", id="unknown-head-type"),
])
def test_launcher_rejects_a_broken_copy(mutate, message):
    broken = copy.deepcopy(CLUSTER)
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=re.escape(message)):
        launcher_check(broken)


def test_cluster_yaml_shape():
    head = CLUSTER["available_node_types"][CLUSTER["head_node_type"]]
    workers = {name: spec for name, spec in CLUSTER["available_node_types"].items() if spec is not head}
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] >= 2
    [worker] = workers.values()
    assert (worker["min_workers"], worker["max_workers"], worker["resources"]["GPU"]) == (0, 8, 1)
    assert 1 <= CLUSTER["idle_timeout_minutes"] <= 60
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_MINOR)}\.\d+-py3\d+-gpu", CLUSTER["docker"]["image"])
    assert any(f"v{PROJECT_VERSION}" in command for command in CLUSTER["setup_commands"]), (
        f"setup_commands should install this release, v{PROJECT_VERSION}"
    )


def test_cluster_yaml_has_room_for_the_nightly_job():
    worker = CLUSTER["available_node_types"]["gpu_worker"]
    shape = worker["resources"]["CPU"], worker["resources"]["GPU"], worker["max_workers"]
    pools = nightly_pools(*shape)
    assert {pool.device for pool in pools} == {"cuda"} and max(pool.max_actors for pool in pools) == 8
    fits(pools, *shape)


def header_problems(doc: dict, kind: str, max_name: int):
    """The problems of a ray.io/v1 manifest's apiVersion, kind and name, and the `need(ok, what)` that adds more."""
    problems: list[str] = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    need(doc.get("apiVersion") == "ray.io/v1", "apiVersion: ray.io/v1")
    need(doc.get("kind") == kind, f"kind: {kind}")
    name = (doc.get("metadata") or {}).get("name", "")
    need(bool(re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name)) and len(name) <= max_name,
         f"metadata.name: a DNS-1123 label of at most {max_name} characters")
    return problems, need


def rayjob_problems(doc: dict) -> list[str]:
    """What a RayJob (ray.io/v1) manifest lacks for this project; empty when it is complete."""
    problems, need = header_problems(doc, "RayJob", 63)
    spec = doc.get("spec") or {}
    need(isinstance(spec.get("entrypoint"), str) and spec["entrypoint"].strip() != "", "spec.entrypoint")
    runtime_env = yaml.safe_load(spec.get("runtimeEnvYAML") or "null")
    need(isinstance(runtime_env, dict) and bool(runtime_env.get("working_dir")) and bool(runtime_env.get("pip")),
         "spec.runtimeEnvYAML: a mapping with working_dir and pip")
    need(spec.get("shutdownAfterJobFinishes") is True, "spec.shutdownAfterJobFinishes: true")
    need(isinstance(spec.get("ttlSecondsAfterFinished"), int) and spec["ttlSecondsAfterFinished"] >= 0,
         "spec.ttlSecondsAfterFinished: seconds")
    cluster = spec.get("rayClusterSpec") or {}
    head = cluster.get("headGroupSpec") or {}
    need(isinstance(head.get("rayStartParams"), dict), "headGroupSpec.rayStartParams")
    head_containers = ((head.get("template") or {}).get("spec") or {}).get("containers") or []
    need(bool(head_containers) and all(c.get("name") and c.get("image") for c in head_containers),
         "headGroupSpec.template.spec.containers with name and image")
    groups = cluster.get("workerGroupSpecs") or []
    need(bool(groups), "rayClusterSpec.workerGroupSpecs")
    for index, group in enumerate(groups):
        where = f"workerGroupSpecs[{index}]"
        need(bool(group.get("groupName")), f"{where}.groupName")
        need(isinstance(group.get("rayStartParams"), dict), f"{where}.rayStartParams")
        bounds = [group.get(key) for key in ("minReplicas", "replicas", "maxReplicas")]
        need(all(isinstance(b, int) for b in bounds) and bounds == sorted(bounds), f"{where}: min <= replicas <= max")
        containers = ((group.get("template") or {}).get("spec") or {}).get("containers") or []
        need(bool(containers) and all(c.get("name") and c.get("image") for c in containers),
             f"{where}.template.spec.containers with name and image")
        need(any(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu") == 1 for c in containers),
             f"{where}: a container with limits nvidia.com/gpu: 1")
    return problems


@pytest.fixture(scope="module")
def rayjob() -> dict:
    assert len(RAYJOB_DOCS) == 1, "k8s/rayjob.yaml should hold one document"
    return RAYJOB_DOCS[0]


def assert_runs_nightly_on_this_release(spec: dict) -> None:
    """A RayJob spec runs the nightly config on the Ray of pyproject.toml, with this release's code."""
    assert spec["entrypoint"] == f"python -m jobs.annotate --config {NIGHTLY}"
    cluster = spec["rayClusterSpec"]
    images = [c["image"] for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]]
    assert cluster["rayVersion"].startswith(f"{RAY_MINOR}.")
    assert all(image.startswith(f"rayproject/ray:{cluster['rayVersion']}-") for image in images)
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert f"v{PROJECT_VERSION}" in runtime_env["working_dir"]
    assert any(f"v{PROJECT_VERSION}" in package for package in runtime_env["pip"])


def test_rayjob_has_the_fields_kuberay_needs(rayjob):
    assert rayjob_problems(rayjob) == []
    assert_runs_nightly_on_this_release(rayjob["spec"])


@pytest.mark.parametrize("mutate, problem", [
    pytest.param(lambda d: d.update(kind="RayJobs"), "kind: RayJob", id="kind-typo"),
    pytest.param(lambda d: d["spec"].pop("entrypoint"), "spec.entrypoint", id="no-entrypoint"),
    pytest.param(lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
                 ["resources"]["limits"].pop("nvidia.com/gpu"),
                 "workerGroupSpecs[0]: a container with limits nvidia.com/gpu: 1", id="no-gpu-limit"),
    pytest.param(lambda d: d["spec"].update(runtimeEnvYAML="pip: [s3fs]"),
                 "spec.runtimeEnvYAML: a mapping with working_dir and pip", id="no-working-dir"),
])
def test_rayjob_check_notices_a_missing_field(rayjob, mutate, problem):
    broken = copy.deepcopy(rayjob)
    mutate(broken)
    assert problem in rayjob_problems(broken)


def test_rayjob_has_room_for_the_nightly_job(rayjob):
    [group] = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    shape = cpus(limits["cpu"]), float(limits["nvidia.com/gpu"]), group["maxReplicas"]
    fits(nightly_pools(*shape), *shape)


def nightly_time(expression: str) -> tuple[int, int] | None:
    """The (hour, minute) of a cron schedule that runs once every night, the only kind this project ships; None for
    anything else. Five fields, single spaces: a plain minute (0-59) and hour (0-23), then `* * *`. Stricter than
    KubeRay's parser (lists, ranges, steps, names, @daily), none of whose other forms is one run every night."""
    match = re.fullmatch(r"(\d{1,2}) (\d{1,2}) \* \* \*", expression)
    if match is None or int(match[1]) > 59 or int(match[2]) > 23:
        return None
    return int(match[2]), int(match[1])


def cron_lines(markdown: Path) -> list[str]:
    """The lines of a markdown file's ```cron blocks (crontab entries the docs tell users to install)."""
    blocks = re.findall(r"^ *```cron\n(.*?)^ *```", markdown.read_text(), re.MULTILINE | re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


CRONTAB_ENTRIES = [entry for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
                   for entry in cron_lines(path)]
"""Every crontab entry the README and docs show: each must be a valid, nightly schedule for the nightly job."""


def raycronjob_problems(doc: dict) -> list[str]:
    """What a RayCronJob (ray.io/v1) manifest lacks for this project; empty when it is complete. Its job template
    gets the RayJob's checks, on the RayJob KubeRay makes of it."""
    problems, need = header_problems(doc, "RayCronJob", MAX_RAYCRONJOB_NAME)
    name = (doc.get("metadata") or {}).get("name", "")
    spec = doc.get("spec") or {}
    need(nightly_time(str(spec.get("schedule", ""))) is not None,
         "spec.schedule: once a night, as 'minute hour * * *' with minute 0-59 and hour 0-23")
    need(spec.get("timeZone") in zoneinfo.available_timezones(), "spec.timeZone: an IANA time zone")
    need(spec.get("suspend", False) is False, "spec.suspend: false (a suspended RayCronJob never runs)")
    template = spec.get("jobTemplate")
    need(isinstance(template, dict), "spec.jobTemplate: a RayJob spec")
    if isinstance(template, dict):
        tonight = f"{name}-{int(time.time()) // 60}"  # KubeRay names each RayJob after its minute
        rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": tonight}, "spec": template}
        problems += [f"spec.jobTemplate: {problem}" for problem in rayjob_problems(rayjob)]
    return problems


def closed(schema):
    """A copy of a CRD schema in which every object that lists its fields takes no others: `kubectl apply` rejects
    unknown fields (strict field validation, its default), where jsonschema would let them through."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copied = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema:
        copied.setdefault("additionalProperties", False)
    return copied


@pytest.fixture(scope="module")
def raycronjob() -> dict:
    assert len(RAYCRONJOB_DOCS) == 1, "k8s/raycronjob.yaml should hold one document"
    return RAYCRONJOB_DOCS[0]


def test_raycronjob_has_the_fields_kuberay_needs(raycronjob):
    assert raycronjob_problems(raycronjob) == []
    assert_runs_nightly_on_this_release(raycronjob["spec"]["jobTemplate"])


def test_raycronjob_passes_kuberays_schema(raycronjob):
    jsonschema.validate(raycronjob, closed(RAYCRONJOB_SCHEMA))


def test_raycronjob_runs_once_a_night_at_the_time_the_docs_state(raycronjob):
    """One run a night, in UTC, at the time the file's header states (and docs/cluster.md's RayCronJob item, where it
    names one)."""
    time_of_day = nightly_time(raycronjob["spec"]["schedule"])
    assert time_of_day is not None, f"{raycronjob['spec']['schedule']!r} is not 'minute hour * * *'"
    assert raycronjob["spec"]["timeZone"] in ("Etc/UTC", "UTC")
    header = (REPO / "k8s" / "raycronjob.yaml").read_text().split("\napiVersion:")[0]
    stated = re.findall(r"\b(\d\d):(\d\d) UTC\b", header)
    assert stated, "the header should say when the job runs"
    docs = re.findall(r"^- \*\*RayCronJob\*\*.*?\n\n", (REPO / "docs" / "cluster.md").read_text(),
                      re.MULTILINE | re.DOTALL)
    stated += re.findall(r"\b(\d\d):(\d\d) UTC\b", "".join(docs))
    assert {(int(hour), int(minute)) for hour, minute in stated} == {time_of_day}


@pytest.mark.parametrize("entry", CRONTAB_ENTRIES)
def test_documented_crontab_entries_submit_the_nightly_job_once_a_night(entry):
    fields = entry.split(" ", 5)
    assert len(fields) == 6, f"{entry!r}: five schedule fields and a command"
    assert nightly_time(" ".join(fields[:5])) is not None, f"{entry!r}: not once a night"
    assert f"-m jobs.submit --config {NIGHTLY} " in fields[5]


def test_the_docs_show_a_crontab_entry():
    assert CRONTAB_ENTRIES, "docs/cluster.md's cron + jobs.submit route lost its crontab line"


def test_raycronjob_runs_the_rayjob(raycronjob, rayjob):
    """One cluster shape, image and runtime environment: the template is the RayJob's spec, all of it."""
    assert raycronjob["spec"]["jobTemplate"] == rayjob["spec"]
    assert raycronjob["metadata"]["labels"] == rayjob["metadata"]["labels"]


@pytest.mark.parametrize("mutate, problem", [
    pytest.param(lambda d: d.update(kind="CronJob"), "kind: RayCronJob", id="kind"),
    pytest.param(lambda d: d["metadata"].update(name="nlp-annotate-nightly-with-a-long-name"),
                 f"metadata.name: a DNS-1123 label of at most {MAX_RAYCRONJOB_NAME} characters", id="long-name"),
    pytest.param(lambda d: d["spec"].update(schedule="0 2 * *"), "spec.schedule: once a night", id="four-fields"),
    pytest.param(lambda d: d["spec"].update(schedule="0 24 * * *"), "spec.schedule: once a night", id="hour-24"),
    pytest.param(lambda d: d["spec"].update(schedule="0 2 * * 1-5"), "spec.schedule: once a night", id="weekdays"),
    pytest.param(lambda d: d["spec"].update(schedule="*/30 2 * * *"), "spec.schedule: once a night",
                 id="twice-a-night"),
    pytest.param(lambda d: d["spec"].update(timeZone="Europe/Springfield"), "spec.timeZone: an IANA time zone",
                 id="unknown-zone"),
    pytest.param(lambda d: d["spec"].update(suspend=True), "spec.suspend: false", id="suspended"),
    pytest.param(lambda d: d["spec"]["jobTemplate"].pop("entrypoint"), "spec.jobTemplate: spec.entrypoint",
                 id="no-entrypoint"),
])
def test_raycronjob_check_notices_a_missing_field(raycronjob, mutate, problem):
    broken = copy.deepcopy(raycronjob)
    mutate(broken)
    assert any(found.startswith(problem) for found in raycronjob_problems(broken))


@pytest.mark.parametrize("mutate, message", [
    pytest.param(lambda d: d["spec"].update(concurrencyPolicy="Forbid"), "'concurrencyPolicy' was unexpected",
                 id="no-concurrency-policy-in-1.7"),
    pytest.param(lambda d: d["spec"]["jobTemplate"].update(shutdownAfterJobFinish=True),
                 "'shutdownAfterJobFinish' was unexpected", id="template-typo"),
    pytest.param(lambda d: d["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0].update(maxReplica=8),
                 "'maxReplica' was unexpected", id="worker-group-typo"),
    pytest.param(lambda d: d["spec"].update(timeZone=""), "should be non-empty", id="empty-zone"),
    pytest.param(lambda d: d["spec"].pop("schedule"), "'schedule' is a required property", id="no-schedule"),
])
def test_kuberays_schema_rejects_a_broken_copy(raycronjob, mutate, message):
    broken = copy.deepcopy(raycronjob)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        jsonschema.validate(broken, closed(RAYCRONJOB_SCHEMA))
