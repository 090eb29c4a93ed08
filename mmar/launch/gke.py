"""GKE: a JobSet manifest for one run, on TPU slices or GPU nodes.

One pod per host, each running the same `mmar` command (`python -m mmar`) in a container
image that holds the repository with its pinned dependencies (launch/Dockerfile).

- TPU: a replicated job per slice (`replicas = num_slices`), one pod per TPU VM host of the
  slice (`google.com/tpu` chips each, `cloud.google.com/gke-tpu-accelerator` and
  `gke-tpu-topology` node selectors, one slice per node pool through the exclusive-topology
  annotation). GKE gives each pod TPU_WORKER_ID / TPU_WORKER_HOSTNAMES and, across slices,
  the MEGASCALE_* settings, so `--distributed` is all mmar needs (as in the GKE multi-slice
  examples and xpk).
- GPU: one indexed job of `num_hosts` pods (`nvidia.com/gpu` each). JAX cannot detect a
  Kubernetes process group without extra packages, so the command names it: the coordinator
  is pod 0, reached through the JobSet's headless service
  (`NAME-workers-0-0.NAME`, `network.enableDNSHostnames`), the process index is the pod's
  completion index (JOB_COMPLETION_INDEX); a shell wrapper expands them and `exec`s mmar,
  so that mmar is PID 1 and receives the SIGTERM of a preemption. One process drives all
  GPUs of its pod, and `mesh.dcn_data` is the host count: parameters stay inside a node.

Preemption: mmar saves a checkpoint on SIGTERM (within terminationGracePeriodSeconds); the
JobSet's failurePolicy recreates all pods (up to max_restarts), and the same command resumes
from the newest checkpoint in the gs:// workdir.
"""
from __future__ import annotations

import dataclasses
import math

import yaml

from mmar.launch import common

COORDINATOR_PORT = 1234
API_VERSION = "jobset.x-k8s.io/v1alpha2"


@dataclasses.dataclass(frozen=True)
class Options:
    image: str = ""                  # container image with mmar installed (required)
    name: str | None = None          # JobSet name (default: from the workdir's last part)
    accelerator: str = "tpu"         # "tpu" or "gpu"
    namespace: str | None = None
    # TPU
    tpu_accelerator: str = "tpu-v5p-slice"   # cloud.google.com/gke-tpu-accelerator
    tpu_topology: str = "4x4x4"              # cloud.google.com/gke-tpu-topology
    chips_per_host: int = 4
    num_slices: int = 1
    # GPU
    num_hosts: int = 1
    gpus_per_host: int = 8
    gpu_accelerator: str = "nvidia-h100-80gb"    # cloud.google.com/gke-accelerator
    # both
    node_pool: str | None = None     # cloud.google.com/gke-nodepool (GPU; TPU: one per slice)
    spot: bool = False
    max_restarts: int = 10
    grace_seconds: int = 300         # time to write the SIGTERM checkpoint
    python: str = "python"

    def __post_init__(self):
        if not self.image:
            raise ValueError("gke: --image is required (an image with mmar installed, "
                             "see launch/Dockerfile)")
        if self.accelerator not in ("tpu", "gpu"):
            raise ValueError(f"gke: --accelerator={self.accelerator}: tpu or gpu")

    def hosts_per_slice(self) -> int:
        chips = math.prod(int(d) for d in self.tpu_topology.split("x"))
        if chips % self.chips_per_host:
            raise ValueError(f"gke: topology {self.tpu_topology} ({chips} chips) does not "
                             f"split into hosts of {self.chips_per_host} chips")
        return max(1, chips // self.chips_per_host)


def _tpu_pod(spec, opts, name):
    selector = {"cloud.google.com/gke-tpu-accelerator": opts.tpu_accelerator,
                "cloud.google.com/gke-tpu-topology": opts.tpu_topology}
    spec = common.across(spec, opts.num_slices)
    command = "exec " + common.shell(common.mmar_argv(opts.python, spec, "--distributed"))
    container = {"name": "mmar", "image": opts.image, "command": ["bash", "-c", command],
                 "ports": [{"containerPort": 8471}, {"containerPort": 8080}],
                 "resources": {"limits": {"google.com/tpu": opts.chips_per_host}}}
    return selector, container, {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}


def _gpu_pod(spec, opts, name):
    selector = {"cloud.google.com/gke-accelerator": opts.gpu_accelerator}
    if opts.node_pool:
        selector["cloud.google.com/gke-nodepool"] = opts.node_pool
    spec = common.across(spec, opts.num_hosts)    # one process per node, as per="node" SLURM
    command = ("exec " + common.shell(common.mmar_argv(opts.python, spec)) +
               ' --coordinator_address="${JAX_COORDINATOR_ADDRESS}"'
               ' --num_processes="${JAX_NUM_PROCESSES}" --process_id="${JOB_COMPLETION_INDEX}"')
    env = [{"name": "JAX_COORDINATOR_ADDRESS",
            "value": f"{name}-workers-0-0.{name}:{COORDINATOR_PORT}"},
           {"name": "JAX_NUM_PROCESSES", "value": str(opts.num_hosts)},
           # every GPU of the pod to its one process (else a detected cluster may pick one)
           {"name": "JAX_LOCAL_DEVICE_IDS",
            "value": ",".join(map(str, range(opts.gpus_per_host)))}]
    container = {"name": "mmar", "image": opts.image, "command": ["bash", "-c", command],
                 "env": env, "ports": [{"containerPort": COORDINATOR_PORT}],
                 "resources": {"limits": {"nvidia.com/gpu": opts.gpus_per_host}}}
    return selector, container, {}


def manifest(spec: common.RunSpec, opts: Options) -> dict:
    """The JobSet as a dict (render() dumps it)."""
    common.require_bucket(spec, "gke")
    name = common.job_name(spec, opts.name, limit=30)   # pod names add ~20 characters
    tpu = opts.accelerator == "tpu"
    selector, container, pod_extra = (_tpu_pod if tpu else _gpu_pod)(spec, opts, name)
    if opts.spot:
        selector["cloud.google.com/gke-spot"] = "true"
    hosts = opts.hosts_per_slice() if tpu else opts.num_hosts
    pod = {"metadata": {"labels": {"app.kubernetes.io/name": "mmar", "mmar/run": name}},
           "spec": {"restartPolicy": "Never", "nodeSelector": selector,
                    "terminationGracePeriodSeconds": opts.grace_seconds, **pod_extra,
                    "containers": [container]}}
    job = {"name": "slice" if tpu else "workers",
           "replicas": opts.num_slices if tpu else 1,
           "template": {"spec": {"parallelism": hosts, "completions": hosts,
                                 "completionMode": "Indexed", "backoffLimit": 0,
                                 "template": pod}}}
    metadata = {"name": name, "labels": {"app.kubernetes.io/name": "mmar"}}
    if opts.namespace:
        metadata["namespace"] = opts.namespace
    if tpu:   # one slice per node pool
        metadata["annotations"] = {
            "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}
    return {"apiVersion": API_VERSION, "kind": "JobSet", "metadata": metadata,
            "spec": {"failurePolicy": {"maxRestarts": opts.max_restarts},
                     "network": {"enableDNSHostnames": True,
                                 "publishNotReadyAddresses": True},
                     "replicatedJobs": [job]}}


def render(spec: common.RunSpec, opts: Options) -> str:
    doc = manifest(spec, opts)
    name, ns = doc["metadata"]["name"], ["-n", opts.namespace] if opts.namespace else []
    head = (f"# mmar launch gke: JobSet {name} ({opts.accelerator}): "
            f"mmar {spec.command} -> {spec.workdir}\n"
            f"# submit: {common.shell(['kubectl', *ns, 'apply', '-f', '-'])} (this manifest "
            f"on stdin); stop: {common.shell(['kubectl', *ns, 'delete', 'jobset', name])}\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000)


def add_arguments(parser) -> None:
    d = Options.__dataclass_fields__
    parser.add_argument("--image", required=True, help="image with mmar (launch/Dockerfile)")
    parser.add_argument("--name", help="JobSet name (default: from the workdir)")
    parser.add_argument("--accelerator", choices=("tpu", "gpu"), default="tpu")
    parser.add_argument("--namespace")
    parser.add_argument("--tpu_accelerator", default=d["tpu_accelerator"].default)
    parser.add_argument("--tpu_topology", default=d["tpu_topology"].default)
    parser.add_argument("--chips_per_host", type=int, default=d["chips_per_host"].default)
    parser.add_argument("--num_slices", type=int, default=1)
    parser.add_argument("--num_hosts", type=int, default=1, help="GPU pods")
    parser.add_argument("--gpus_per_host", type=int, default=d["gpus_per_host"].default)
    parser.add_argument("--gpu_accelerator", default=d["gpu_accelerator"].default)
    parser.add_argument("--node_pool")
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--max_restarts", type=int, default=d["max_restarts"].default)
    parser.add_argument("--grace_seconds", type=int, default=d["grace_seconds"].default)
    parser.add_argument("--out", help="also write the manifest to this file")


def options_from(args) -> Options:
    return Options(**{f: getattr(args, f) for f in Options.__dataclass_fields__
                      if hasattr(args, f)})


def submit(spec: common.RunSpec, opts: Options, dry_run: bool, out: str | None = None) -> int:
    ns = ["-n", opts.namespace] if opts.namespace else []
    return common.submit_text(render(spec, opts), ["kubectl", *ns, "apply", "-f", "-"],
                              dry_run=dry_run, out=out)
