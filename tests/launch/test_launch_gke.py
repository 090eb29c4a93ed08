"""`mmar launch gke`: the JobSet parses as YAML and carries what jax.distributed needs."""
import shlex

import pytest
import yaml

from mmar.launch import common, gke

SPEC = common.RunSpec("configs/pretrain.py:7b", "gs://b/runs/7b run")


def _container(doc):
    return doc["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"][0]


def test_tpu_multi_slice_jobset():
    opts = gke.Options(image="img:1", tpu_topology="4x4x4", chips_per_host=4, num_slices=2)
    doc = yaml.safe_load(gke.render(SPEC, opts))
    assert doc["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and doc["kind"] == "JobSet"
    assert doc["metadata"]["annotations"] == {
        "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}
    job = doc["spec"]["replicatedJobs"][0]
    assert job["replicas"] == 2                                   # one job per slice
    assert job["template"]["spec"]["parallelism"] == 16           # 64 chips / 4 per host
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "4x4x4"}
    assert pod["containers"][0]["resources"]["limits"] == {"google.com/tpu": 4}
    command = _container(doc)["command"]
    assert command[:2] == ["bash", "-c"]
    assert shlex.split(command[2]) == [
        "exec", "python", "-m", "mmar", "train", "--config=configs/pretrain.py:7b",
        "--workdir=gs://b/runs/7b run", "--config.mesh.dcn_data=2", "--distributed"]


def test_gpu_jobset_names_the_process_group():
    opts = gke.Options(image="img:1", accelerator="gpu", num_hosts=4, gpus_per_host=8,
                       node_pool="h100-pool", name="llm", spot=True)
    doc = yaml.safe_load(gke.render(SPEC, opts))
    assert doc["spec"]["network"]["enableDNSHostnames"] is True
    job = doc["spec"]["replicatedJobs"][0]
    assert job["name"] == "workers" and job["replicas"] == 1
    assert job["template"]["spec"]["completionMode"] == "Indexed"
    assert job["template"]["spec"]["completions"] == 4
    container = _container(doc)
    env = {e["name"]: e["value"] for e in container["env"]}
    # pod 0 of job 0 of replicated job `workers`, through the JobSet's headless service
    assert env["JAX_COORDINATOR_ADDRESS"] == "llm-workers-0-0.llm:1234"
    assert env["JAX_NUM_PROCESSES"] == "4"
    assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
    selector = job["template"]["spec"]["template"]["spec"]["nodeSelector"]
    assert selector["cloud.google.com/gke-nodepool"] == "h100-pool"
    assert selector["cloud.google.com/gke-spot"] == "true"
    argv = shlex.split(container["command"][2])
    assert argv[0] == "exec" and "--workdir=gs://b/runs/7b run" in argv
    assert "--config.mesh.dcn_data=4" in argv           # gradients across nodes only
    assert argv[-3:] == ['--coordinator_address=${JAX_COORDINATOR_ADDRESS}',
                         '--num_processes=${JAX_NUM_PROCESSES}',
                         '--process_id=${JOB_COMPLETION_INDEX}']
    assert "--distributed" not in argv


def test_refusals():
    with pytest.raises(ValueError, match="--image is required"):
        gke.Options()
    with pytest.raises(ValueError, match="does not split"):
        gke.render(SPEC, gke.Options(image="i", tpu_topology="2x3", chips_per_host=4))
    with pytest.raises(ValueError, match="gs://"):
        gke.render(common.RunSpec("c.py:x", "runs/x"), gke.Options(image="i"))
