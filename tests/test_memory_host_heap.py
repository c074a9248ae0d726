import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# Allocate and free 64 blocks of 4 MiB while holding a small allocation above them, then
# report how much anonymous memory the process still holds: glibc keeps freed heap blocks
# below its (dynamic) mmap threshold, returning_freed_memory sends them back to the OS.
SCRIPT = r"""
import ctypes, sys
from memory.host_heap import returning_freed_memory

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

def churn():
    # One 16 MiB block freed first lifts glibc's dynamic mmap threshold to 16 MiB.
    big = libc.malloc(16 << 20); libc.free(big)
    blocks = []
    for _ in range(64):
        block = libc.malloc(4 << 20); libc.memset(block, 1, 4 << 20); blocks.append(block)
    pin = libc.malloc(256 << 10)  # above the blocks (too big for a free-list hit): the heap top cannot shrink past it
    for block in blocks:
        libc.free(block)
    return pin

before = anon()
if sys.argv[1] == "guarded":
    with returning_freed_memory():
        churn()
        inside = anon()
else:
    churn()
    inside = anon()
print(inside - before)
"""


def _retained_bytes(mode: str) -> int:
    completed = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True, timeout=120)
    return int(completed.stdout.strip())


def test_freed_load_temporaries_go_back_to_the_os_inside_the_guard():
    plain = _retained_bytes("plain")
    guarded = _retained_bytes("guarded")

    assert plain > 128 * 1024**2  # glibc kept most of the 256 MiB it was handed back
    assert guarded < 32 * 1024**2
