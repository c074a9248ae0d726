"""vLLM's engine-core processes still running under this one: the vLLM tests' scripts (run in vLLM's environment)
check that a link let go took its engine process with it."""

import psutil


def engine_cores_left() -> list[int]:
    """The pids of this process's descendants that are vLLM engine cores; one that has exited (a zombie not yet
    reaped, or gone while it is looked at) counts as gone."""
    cores = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "EngineCore" in " ".join(child.cmdline()):
                cores.append(child.pid)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return cores
