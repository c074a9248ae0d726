"""bench/overhead.py's arithmetic on py-spy's collapsed stacks: CPU a request per process, the share of vLLM's worker
inside a forward pass (only that is the engine's), and the frames named by the code that asked for the time."""

import collections

import pytest

from bench.overhead import Profile, summarize

pytestmark = pytest.mark.unit

INGRESS_STACKS = {
    "main_loop (ray/_private/worker.py:900)": 60,
    "_run (asyncio/events.py:80);chat_completions (/work/main/deployments/edge/ingress.py:600);"
    "decode (/work/main/deployments/edge/chat_translation.py:256);load (PIL/ImageFile.py:300)": 30,
    "_run (asyncio/events.py:80);handle (ray/serve/_private/replica.py:10);dumps (cloudpickle/cloudpickle.py:5)": 10,
}
WORKER_STACKS = {
    "worker_busy_loop (vllm/v1/executor/multiproc_executor.py:10);execute_model (vllm/v1/worker/cpu_worker.py:20);"
    "forward (vllm/model_executor/models/qwen2.py:30)": 90,
    "worker_busy_loop (vllm/v1/executor/multiproc_executor.py:10);sched_yield (vllm/distributed/utils.py:40)": 10,
}


def test_cpu_a_request_forward_share_and_frames_by_who_asked():
    profiles = [
        Profile("ingress", 11, cpu_s=0.5, samples=collections.Counter(INGRESS_STACKS)),
        Profile("ingress", 12, cpu_s=0.3, samples=collections.Counter()),  # a second replica, not sampled
        Profile("vllm worker", 13, cpu_s=20.0, samples=collections.Counter(WORKER_STACKS)),
    ]

    report = summarize(profiles, requests=40, top=3)

    assert list(report) == ["vllm worker", "ingress"]  # by CPU a request
    ingress, worker = report["ingress"], report["vllm worker"]
    assert (ingress["processes"], ingress["cpu_ms_per_request"], ingress["layer_cpu_ms_per_request"]) == (2, 20.0, 20.0)
    assert ingress["top_entry"] == [("main_loop (_private/worker.py)", 0.6), ("decode (edge/chat_translation.py)", 0.3),
                                    ("handle (_private/replica.py)", 0.1)]
    assert ingress["top_own"][1] == ("load (PIL/ImageFile.py)", 0.3)
    assert worker["forward_share"] == 0.9
    assert worker["cpu_ms_per_request"] == 500.0 and worker["layer_cpu_ms_per_request"] == 50.0  # 10% outside forward


def test_an_unsampled_worker_counts_as_the_engine_and_others_as_the_layer():
    report = summarize([Profile("vllm worker", 1, 8.0, collections.Counter()), Profile("serve proxy", 2, 0.4, collections.Counter())],
                       requests=8, top=3)

    assert report["vllm worker"]["layer_cpu_ms_per_request"] == 0.0
    assert report["serve proxy"]["layer_cpu_ms_per_request"] == 50.0
    assert report["serve proxy"]["forward_share"] is None
