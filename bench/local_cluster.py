"""A multi-node Ray cluster on one machine: every node a ``ray start`` process in a network namespace of its own.

Each node gets its own network namespace on a bridge (its own IP, its own ports), so every node runs a Serve
proxy on port 8000, as the nodes of a real cluster do, and a node can be lost by stopping one process. The
tests (``tests/integration/test_cluster.py``) and ``bench/cluster.py`` share it.

- Nodes are ``ray start --block`` processes started here (each leads a session of its own), stopped by their
  pid: SIGTERM (Ray drains the node, then stops its processes), or SIGKILL to the node's session (a crash).
  Nothing started elsewhere is touched: no ``ray stop``.
- **Nodes share no filesystem**, as a cluster's pods do not: each node runs in a mount namespace of its own where
  the cluster's ``n/`` folder (of nodes) holds only its own folder (the others are hidden under an empty tmpfs), and its
  temp dir (``TMPDIR``), ``HOME``, model cache (``VIDEO_DETECTIVE_CACHE``) and Ray's temp dir are in it. A path that
  one node writes and another reads fails here as it would on Kubernetes.
- **One object store for all of them**: a real S3 endpoint (moto's server, started here on the bridge's address)
  whose credentials every node gets in its environment (``AWS_*``, as the manifest's Secret gives them);
  :attr:`LocalCluster.store_url` is its bucket.
- Needs root (``ip netns``, ``unshare --mount``); :func:`namespaces_unavailable` says why not, for a skip.

Example::

    with LocalCluster(folder) as cluster:
        cluster.start_head(num_cpus=1)
        cluster.add_node("gpu-worker", num_cpus=1, num_gpus=1)
        cluster.serve_deploy(config_path)
        httpx.get(f"http://{cluster.node('gpu-worker').ip}:8000/healthz")
"""

import dataclasses
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import httpx
import psutil
import yaml

from deployments.serve_env import CLUSTER_ENV

logger = logging.getLogger(__name__)

RAY_PORT = 6379
DASHBOARD_PORT = 8265
SERVE_HTTP_PORT = 8000
METRICS_PORT = 8080
_BIN = pathlib.Path(sys.executable).parent


def namespaces_unavailable() -> str | None:
    """Why this machine cannot host a namespaced cluster (``None`` when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns); run the tests as root, as CI does"
    if shutil.which("ip") is None:
        return "no 'ip' command (Debian's iproute2)"
    probe = f"vdprobe{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        return f"ip netns add failed: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


# Run inside the node's network namespace, in a mount namespace of its own: hide every node's folder under an empty
# tmpfs, bring back this node's own at its path, and start the node with its temp dir, home and caches in it.
_NODE_FILESYSTEM = """
set -e
nodes="$1"; mine="$2"; shift 2
mount --bind "$mine" /mnt
mount -t tmpfs -o mode=0755 vd-nodes "$nodes"
mkdir -p "$mine"
mount --bind /mnt "$mine"
umount /mnt
export TMPDIR="$mine/tmp" HOME="$mine/home" VIDEO_DETECTIVE_CACHE="$mine/cache"
exec "$@"
"""
_NODE_PARTS = ("tmp", "home", "cache", "r")  # "r": Ray's temp dir (its socket paths must stay short)
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "vd-cluster-key", "AWS_SECRET_ACCESS_KEY": "vd-cluster-secret"}
BUCKET = "video-detective"


def _kill_session(session_id: int) -> None:
    """SIGKILL every process in the session ``session_id`` leads (a node's ``ray start`` and all it started)."""
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == session_id:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def _run(*command: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}): {completed.stderr.strip()}")


@dataclasses.dataclass
class ClusterNode:
    name: str
    ip: str
    netns: str
    args: list[str]
    process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"http://{self.ip}:{SERVE_HTTP_PORT}"


class LocalCluster:
    """Nodes on a private bridge ``10.213.<n>.0/24``: this machine is ``.1``, the head ``.2``, the next node ``.3``..."""

    def __init__(self, folder: pathlib.Path, *, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._nodes_folder = folder / "n"  # short: Ray's unix socket paths under it must stay within 107 bytes
        self._nodes_folder.mkdir(exist_ok=True)
        self._tag = uuid.uuid4().hex[:6]  # interface and namespace names: at most 15 characters
        self._bridge = f"vdb{self._tag}"
        self._subnet = f"10.213.{int(self._tag, 16) % 250 + 1}"
        self._nodes: dict[str, ClusterNode] = {}
        self._interfaces: list[str] = []
        self._store_process: subprocess.Popen | None = None
        _run("ip", "link", "add", self._bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self._bridge)
        _run("ip", "link", "set", self._bridge, "up")
        try:
            self._start_object_store()
        except BaseException:
            self.shutdown()  # the bridge and a half-started store go with it
            raise
        self.store_url = f"s3://{BUCKET}"
        self._env = {
            **CLUSTER_ENV,  # as the image sets them (deploy/Dockerfile)
            **os.environ,
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PATH": f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **S3_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            **(env or {}),
        }

    @property
    def host_ip(self) -> str:
        """This machine's address on the cluster's bridge: what every node reaches it by."""
        return f"{self._subnet}.1"

    def _start_object_store(self) -> None:
        """moto's S3 server on the bridge's address (every node reaches it), with the cluster's bucket; sets
        :attr:`s3_endpoint`."""
        with socket.socket() as probe:
            probe.bind((self.host_ip, 0))
            port = probe.getsockname()[1]
        log = open(self.folder / "object-store.log", "ab")  # noqa: SIM115 - the process holds it
        self._store_process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host_ip, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        endpoint = f"http://{self.host_ip}:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(endpoint, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self._store_process.poll() is not None:
                raise RuntimeError(f"the object store did not start: see {self.folder / 'object-store.log'}")
            time.sleep(0.2)
        self.s3_endpoint = endpoint
        self.object_store().mkdir(BUCKET)

    def object_store(self) -> Any:
        """An fsspec filesystem on the cluster's object store, for this machine (a test's uploads and checks)."""
        import fsspec

        return fsspec.filesystem(
            "s3", key=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"], secret=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            endpoint_url=self.s3_endpoint, skip_instance_cache=True, use_listings_cache=False,
        )

    # -- nodes ---------------------------------------------------------------------------------

    @property
    def head(self) -> ClusterNode:
        return next(iter(self._nodes.values()))

    @property
    def address(self) -> str:
        return f"{self.head.ip}:{RAY_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def node(self, name: str) -> ClusterNode:
        return self._nodes[name]

    def wipe_node_folder(self, name: str) -> None:
        """Empty a stopped node's folder, as a new pod starts with a new disk."""
        if self._nodes[name].process is not None:
            raise RuntimeError(f"node {name} is running; stop it first")
        own = self.node_folder(name)
        shutil.rmtree(own, ignore_errors=True)
        for part in _NODE_PARTS:
            (own / part).mkdir(parents=True, exist_ok=True)

    def node_folder(self, name: str) -> pathlib.Path:
        """The one folder node ``name`` sees of the cluster's: its temp dir, home, model cache and Ray's files."""
        return self._nodes_folder / name

    @property
    def nodes(self) -> list[ClusterNode]:
        return list(self._nodes.values())

    def start_head(self, *, num_cpus: float, num_gpus: int = 0, labels: dict[str, str] | None = None) -> ClusterNode:
        args = [
            "--head", f"--port={RAY_PORT}", "--include-dashboard=true", "--dashboard-host=0.0.0.0",
            f"--dashboard-port={DASHBOARD_PORT}",
        ]
        return self._start("head", [*args, *self._resource_args(num_cpus, num_gpus, labels)])

    def add_node(self, name: str, *, num_cpus: float, num_gpus: int = 0, labels: dict[str, str] | None = None) -> ClusterNode:
        return self._start(name, [f"--address={self.address}", *self._resource_args(num_cpus, num_gpus, labels)])

    @staticmethod
    def _resource_args(num_cpus: float, num_gpus: int, labels: dict[str, str] | None) -> list[str]:
        args = [f"--num-cpus={num_cpus:g}", f"--num-gpus={num_gpus}"]
        if labels:
            args.append("--labels=" + ",".join(f"{key}={value}" for key, value in labels.items()))
        return args

    def _start(self, name: str, args: list[str]) -> ClusterNode:
        index = len(self._nodes) + 2
        netns = f"vdn{self._tag}{index}"
        ip = f"{self._subnet}.{index}"
        host_side, node_side = f"vdh{self._tag}{index}", f"vdc{self._tag}{index}"
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host_side, "type", "veth", "peer", "name", node_side)
        self._interfaces.append(host_side)
        _run("ip", "link", "set", host_side, "master", self._bridge)
        _run("ip", "link", "set", host_side, "up")
        _run("ip", "link", "set", node_side, "netns", netns)
        _run("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ip}/24", "dev", node_side)
        _run("ip", "netns", "exec", netns, "ip", "link", "set", node_side, "up")
        _run("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        own = self.node_folder(name)
        for part in _NODE_PARTS:
            (own / part).mkdir(parents=True, exist_ok=True)
        node = ClusterNode(
            name=name,
            ip=ip,
            netns=netns,
            args=[
                *args, f"--node-ip-address={ip}", f"--metrics-export-port={METRICS_PORT}",
                f"--temp-dir={own / 'r'}", "--disable-usage-stats", "--block",
            ],
        )
        self._nodes[name] = node
        self.start_node(name)
        return node

    def start_node(self, name: str) -> None:
        """Start (or start again, after :meth:`stop_node`) a node's ``ray start`` in its namespace."""
        node = self._nodes[name]
        log = open(self.folder / f"{name}.log", "ab")  # noqa: SIM115 - the process holds it
        node.process = subprocess.Popen(
            [
                "ip", "netns", "exec", node.netns, "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", _NODE_FILESYSTEM, "sh", str(self._nodes_folder), str(self.node_folder(name)),
                str(_BIN / "ray"), "start", *node.args,
            ],
            stdout=log, stderr=subprocess.STDOUT, env=self._env, start_new_session=True,
        )
        log.close()
        self.wait_for_nodes()

    def stop_node(self, name: str, *, crash: bool = False, timeout_s: float = 90) -> None:
        """Lose a node, found by the pid of the ``ray start`` started here.

        ``crash=False``: SIGTERM, as a machine's shutdown sends; Ray drains the node (up to 30 s) and stops its
        processes. ``crash=True``: SIGKILL to every process of the node's session (the ``ray start``, its raylet
        and its workers, which all share the session that ``ray start`` leads), as when a machine dies."""
        node = self._nodes[name]
        if node.process is None or node.process.poll() is not None:
            node.process = None
            return
        if crash:
            _kill_session(node.process.pid)
        else:
            node.process.send_signal(signal.SIGTERM)
        try:
            node.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_session(node.process.pid)
            node.process.wait()
        node.process = None

    def alive_node_ips(self) -> set[str]:
        """The IPs of the nodes the cluster counts alive now (from the head's state API)."""
        response = httpx.get(f"{self.dashboard_url}/nodes?view=summary", timeout=10)
        response.raise_for_status()
        summary = response.json()["data"]["summary"]
        return {entry["raylet"]["nodeManagerAddress"] for entry in summary if entry["raylet"]["state"] == "ALIVE"}

    def wait_for_nodes(self, timeout_s: float = 120) -> None:
        """Until every started node is alive in the cluster."""
        wanted = {node.ip for node in self._nodes.values() if node.process is not None}
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            for node in self._nodes.values():
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(f"ray start for {node.name} exited {node.process.returncode}: see {self.folder / node.name}.log")
            try:
                last = self.alive_node_ips()
                if wanted <= last:
                    return
            except (httpx.HTTPError, KeyError) as error:
                last = error
            time.sleep(0.5)
        raise TimeoutError(f"nodes {sorted(wanted)} not all alive within {timeout_s} s (last: {last})")

    # -- Serve ---------------------------------------------------------------------------------

    def serve(self, *args: str, timeout_s: float = 120) -> str:
        """Ray Serve's CLI against this cluster (``serve deploy``, ``serve status``): its output."""
        completed = subprocess.run(
            [str(_BIN / "serve"), *args, "--address", self.dashboard_url],
            capture_output=True, text=True, env=self._env, timeout=timeout_s,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"serve {' '.join(args)} failed: {completed.stderr.strip() or completed.stdout.strip()}")
        return completed.stdout

    def serve_deploy(self, config_path: pathlib.Path) -> None:
        self.serve("deploy", str(config_path))

    def serve_status(self) -> dict[str, Any]:
        return yaml.safe_load(self.serve("status"))

    # -- the end -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop every node started here (by pid, at once: a graceful stop drains each node for up to 30 s),
        then remove the namespaces and the bridge."""
        for name in reversed(list(self._nodes)):
            try:
                self.stop_node(name, crash=True)
            except Exception as error:  # noqa: BLE001 - go on stopping the others
                logger.warning("Stopping %s failed: %s", name, error)
        for node in self._nodes.values():
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True)
        for interface in self._interfaces:
            subprocess.run(["ip", "link", "del", interface], capture_output=True)
        subprocess.run(["ip", "link", "del", self._bridge], capture_output=True)
        if self._store_process is not None:
            self._store_process.terminate()
            try:
                self._store_process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._store_process.kill()
                self._store_process.wait()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()


REPO = pathlib.Path(__file__).resolve().parent.parent
GPU_PROBE_FILE_ENV = "VIDEO_DETECTIVE_GPU_PROBE_FILE"


def cluster_serve_config(cluster: LocalCluster, probe_path: pathlib.Path, **args_overrides: dict[str, Any]) -> dict[str, Any]:
    """``serve_config.yaml`` as a cluster runs it on logical GPUs: proxies on every node's address (0.0.0.0), the
    GPU group's chain on the CPU against GPU memory from a probe file, the CPU group on nodes labelled
    ``vd-node=cpu`` and the ingress on the node labelled ``vd-node=head``, files and jobs in the cluster's object
    store (the nodes share no filesystem); ``args_overrides`` updates the app's config sections (``limits={...}``).

    The probe file stands in for the GPU (the hardware boundary), so it lies outside the nodes' folders: every
    node reads the same card's numbers."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["host"] = "0.0.0.0"
    args = config["applications"][0]["args"]
    args["gpu_group"].update(
        device="cpu", load_retry_period_s=1, health_check_period_s=2, env_vars={GPU_PROBE_FILE_ENV: str(probe_path)},
    )
    args["cpu_group"]["node_labels"] = {"vd-node": "cpu"}
    args["ingress"]["node_labels"] = {"vd-node": "head"}  # a lost worker must not take the ingress with it
    args["routing"].update(gpu_timeout_s=10, breaker_cooldown_s=2)
    args["files"] = {"store_url": f"{cluster.store_url}/files"}
    # No keys: this machine calls the nodes from their bridges' 10.213.x.1, and reads the memory view from there.
    local = ["127.0.0.0/8", "::1/128", "10.213.0.0/16"]
    args["auth"] = {"anonymous_networks": local, "memory_view_networks": local}
    for section, values in args_overrides.items():
        args.setdefault(section, {}).update(values)
    return config


def write_config(config: dict[str, Any], path: pathlib.Path) -> pathlib.Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class SteadyTraffic:
    """Chat requests one after another through one proxy, in a thread, until the ``with`` block ends.

    ``results`` holds (answered at, monotonic s; status, 0 for a connection error; group that answered; seconds)."""

    def __init__(self, base_url: str, body: dict[str, Any]) -> None:
        self.results: list[tuple[float, int, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url, body), daemon=True)

    def _run(self, base_url: str, body: dict[str, Any]) -> None:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post("/v1/chat/completions", json=body)
                    status, group = response.status_code, response.headers.get("x-served-by-group", "")
                except httpx.HTTPError as error:
                    status, group = 0, type(error).__name__
                self.results.append((time.monotonic(), status, group, time.monotonic() - started))

    def __enter__(self) -> "SteadyTraffic":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=180)

    def failed(self) -> list[tuple[float, int, str, float]]:
        return [result for result in self.results if result[1] != 200]

    def first_after(self, moment: float, group: str) -> float | None:
        """Seconds from ``moment`` to the first answer from ``group`` after it."""
        return next((at - moment for at, status, served, _ in self.results if at > moment and served == group), None)
