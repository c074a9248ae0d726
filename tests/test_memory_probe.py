import numpy as np

from memory import MemorySnapshot, format_gib
from memory.probe import GpuDeviceMemory


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
        "gpus": (),
    }


def test_format_gib():
    assert format_gib(3 * 1024**3) == "3.00 GiB"
    assert format_gib(None) == "n/a"
