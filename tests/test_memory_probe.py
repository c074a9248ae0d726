import json

import numpy as np
import pytest

from memory.probe import GpuDeviceMemory, MemorySnapshot, format_gib

pytestmark = pytest.mark.unit


def test_a_snapshot_measures_this_process_and_the_system():
    snapshot = MemorySnapshot.measure()

    assert snapshot.process_rss_bytes > 10 * 1024**2
    assert snapshot.system_total_bytes > snapshot.system_available_bytes > 0
    assert snapshot.gpus == ()  # no driver here: the GPU part is empty, nothing raised
    assert all(isinstance(value, int) for value in (snapshot.process_rss_bytes, snapshot.system_total_bytes))


def test_a_known_allocation_shows_in_the_rss_delta():
    size_bytes = 256 * 1024**2
    before = MemorySnapshot.measure()
    block = np.ones(size_bytes, dtype=np.uint8)  # touched pages, so resident

    delta = MemorySnapshot.measure() - before

    assert 0.9 * size_bytes <= delta.process_rss_bytes <= 1.2 * size_bytes
    assert delta.system_total_bytes == 0
    del block


def test_subtraction_matches_gpus_by_position():
    later = MemorySnapshot(1000, 10_000, 4000, None, (GpuDeviceMemory(0, "H100", 80, 30),))
    earlier = MemorySnapshot(400, 10_000, 5000, None, (GpuDeviceMemory(0, "H100", 80, 50),))

    delta = later - earlier

    assert delta.process_rss_bytes == 600
    assert delta.system_available_bytes == -1000
    assert delta.gpus == (GpuDeviceMemory(0, "H100", 0, -20),)


def test_to_dict_is_plain_data():
    as_dict = MemorySnapshot(1, 2, 3).to_dict()

    assert as_dict == {
        "process_rss_bytes": 1,
        "system_total_bytes": 2,
        "system_available_bytes": 3,
        "cgroup_limit_bytes": None,
        "gpu_backend": "none",
        "gpus": [],
    }


def test_format_gib():
    assert format_gib(3 * 1024**3) == "3.00 GiB"
    assert format_gib(None) == "n/a"


from memory.budget import BudgetError, cpu_budget, gpu_budget  # noqa: E402
from memory.probe import FixedGpu, NoGpu, TorchAllocatorStats, detect_gpu_backend  # noqa: E402

GIB = 1024**3


def test_without_a_driver_detection_degrades_to_no_gpu():
    backend = detect_gpu_backend()

    assert isinstance(backend, NoGpu)
    assert MemorySnapshot.measure(backend).gpus == ()


def test_an_empty_cuda_visible_devices_means_no_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    assert isinstance(detect_gpu_backend(), NoGpu)


def test_a_fixed_probe_reports_its_total_and_free():
    snapshot = MemorySnapshot.measure(FixedGpu(total_bytes=80 * GIB, free_bytes=30 * GIB))

    (gpu,) = snapshot.gpus
    assert (gpu.total_bytes, gpu.free_bytes, gpu.used_bytes) == (80 * GIB, 30 * GIB, 50 * GIB)
    assert snapshot.gpu_backend == "fixed"
    assert snapshot.to_dict()["gpus"][0]["used_bytes"] == 50 * GIB


def test_a_probe_file_reports_the_allocator_figures_it_holds(tmp_path):
    from memory.probe import FileGpu

    path = tmp_path / "probe.json"
    path.write_text(json.dumps({"total_bytes": 16 * GIB, "free_bytes": 12 * GIB}))
    (bare,) = FileGpu(str(path)).devices()
    assert (bare.total_bytes, bare.free_bytes, bare.torch) == (16 * GIB, 12 * GIB, None)

    allocator = {"allocated_bytes": 3 * GIB, "reserved_bytes": 4 * GIB, "peak_allocated_bytes": 3 * GIB,
                 "inactive_split_bytes": 0, "num_alloc_retries": 1, "num_ooms": 0}
    path.write_text(json.dumps({"total_bytes": 16 * GIB, "free_bytes": 12 * GIB, "torch": allocator}))
    (gpu,) = FileGpu(str(path)).devices()
    assert gpu.torch.reserved_bytes == 4 * GIB
    assert gpu.torch.fragmentation_ratio == pytest.approx(0.25)
    path.unlink()
    assert FileGpu(str(path)).devices() == ()


def test_a_fixed_probe_refuses_impossible_numbers():
    with pytest.raises(ValueError, match="between 0 and total_bytes"):
        FixedGpu(total_bytes=GIB, free_bytes=2 * GIB)


def test_fragmentation_is_the_idle_share_of_reserved_memory():
    stats = TorchAllocatorStats(
        allocated_bytes=6 * GIB, reserved_bytes=10 * GIB, peak_allocated_bytes=9 * GIB,
        inactive_split_bytes=GIB, num_alloc_retries=3, num_ooms=0,
    )

    assert stats.fragmentation_ratio == pytest.approx(0.4)
    assert TorchAllocatorStats(0, 0, 0, 0, 0, 0).fragmentation_ratio == 0.0


def test_gpu_budget_is_the_share_capped_by_free_minus_context_and_reserve():
    (device,) = FixedGpu(total_bytes=80 * GIB, free_bytes=30 * GIB).devices()

    budget = gpu_budget(device, share=0.5, context_bytes=GIB // 2, reserve_bytes=2 * GIB)

    assert budget.limit_bytes == 40 * GIB
    assert budget.weights_bytes == 30 * GIB - GIB // 2 - 2 * GIB
    assert "min(limit 40.00 GiB, available 30.00 GiB)" in budget.explain()


def test_gpu_budget_on_an_idle_device_is_the_share():
    (device,) = FixedGpu(total_bytes=80 * GIB, free_bytes=80 * GIB).devices()

    assert gpu_budget(device, share=0.5, context_bytes=0, reserve_bytes=0).weights_bytes == 40 * GIB


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share):
    (device,) = FixedGpu(total_bytes=GIB, free_bytes=GIB).devices()

    with pytest.raises(BudgetError, match="num_gpus"):
        gpu_budget(device, share=share, context_bytes=0, reserve_bytes=0)


def test_cpu_budget_is_capped_by_what_the_host_has():
    snapshot = MemorySnapshot(process_rss_bytes=GIB, system_total_bytes=16 * GIB, system_available_bytes=3 * GIB)

    budget = cpu_budget(snapshot, configured_bytes=8 * GIB, reserve_bytes=GIB)

    assert budget.weights_bytes == 2 * GIB


def test_a_cgroup_limit_caps_what_is_available():
    snapshot = MemorySnapshot(process_rss_bytes=GIB, system_total_bytes=64 * GIB, system_available_bytes=60 * GIB, cgroup_limit_bytes=4 * GIB)

    assert snapshot.available_bytes == 3 * GIB
