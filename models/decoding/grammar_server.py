"""xgrammar's compile in a process of its own, with a time limit, abandoned when its request ends.

xgrammar cannot interrupt a compile, and some small schemas cost a lot: on the tiny model's tokenizer a
66-byte ``pattern`` of 400 repeated groups took 2.5 s of CPU, and an enum of 50,000 strings 196 s, holding a
core of the replica all along. So compiles run in a child process (``python -m models.decoding.grammar_server``),
which imports xgrammar and loads the model's tokenizer table once, then forks one grandchild per compile.
The server kills a grandchild that runs past its time limit, or whose request ended (the replica sends
``cancel``), and goes on serving. Each grandchild also has limits of its own: its address space may grow
``limits.max_schema_compile_bytes`` past the server's, its CPU time ends it a second past the time limit, and
it runs niced. At most ``limits.max_schema_compiles`` compiles run at once per replica; past that a compile is
refused at once (:class:`CompileServerBusyError`, back-pressure: 503 when no replica can take it): an abandoned compile costs what it ran and nothing more (no restart, no
re-import). The server is single-threaded, so forking it is safe; each grandchild builds its own compiler.

Messages both ways are a JSON header line, then ``bytes`` bytes of payload:

- to the server: ``{"op": "tokenizer"}`` + xgrammar's ``TokenizerInfo`` JSON (first, once);
  ``{"op": "compile", "id": n, "schema": ..., "time_limit_s": s}``; ``{"op": "cancel", "id": n}``;
- from the server: ``{"id": n, "status": "ok"}`` + the compiled grammar's JSON,
  ``{"id": n, "status": "error", "reason": ...}``, or ``{"id": n, "status": "timeout"}``.

:class:`GrammarCompileProcess` is the replica's side: it starts the server on first use and restarts it
if it dies.
"""

import concurrent.futures
import dataclasses
import itertools
import json
import logging
import math
import os
import pathlib
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Callable

from models.errors import ReplicaBusyError

logger = logging.getLogger(__name__)

_POLL_S = 0.05
# Past the time limit, how long the replica waits for the server's own verdict before it kills the server
# (the server's first compile also waits for its start: importing xgrammar takes about 5 s here).
_SERVER_GRACE_S = 60.0


class CompileTimeoutError(RuntimeError):
    """The compile ran past its time limit and was killed."""


class CompileFailedError(RuntimeError):
    """xgrammar refused the schema (or its compile died); the message is its reason."""


class CompileServerLostError(RuntimeError):
    """The compile server stopped (killed, crashed) before it answered; the schema is not to blame."""


class CompileAbandonedError(RuntimeError):
    """The compile's request ended before it did; the compile was killed."""


class CompileServerBusyError(ReplicaBusyError):
    """The replica already runs its most compiles at once (``limits.max_schema_compiles``): back-pressure, answered
    at once, never queued; another replica, or this one a moment later, may take the request."""


def _send(writer: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    writer.write(json.dumps({**header, "bytes": len(payload)}).encode() + b"\n" + payload)
    writer.flush()


def _receive(reader: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    line = reader.readline()
    if not line:
        return None
    header = json.loads(line)
    payload = reader.read(header["bytes"]) if header["bytes"] else b""
    return header, payload


@dataclasses.dataclass(frozen=True)
class SchemaCompileLimits:
    """What one replica's schema compiles may take (``limits.max_schema_compile_s``, ``max_schema_compiles``,
    ``max_schema_compile_bytes``)."""

    time_limit_s: float = 1.5
    max_in_flight: int = 4
    memory_bytes: int = 2 * 2**30


class GrammarCompileProcess:
    """The replica's handle on the compile server: ``compile`` blocks its caller until the grammar, a
    refusal, the time limit, or ``stop``; compiles from several threads run side by side."""

    def __init__(self, make_tokenizer_info: Callable[[], Any], limits: SchemaCompileLimits) -> None:
        self._make_tokenizer_info = make_tokenizer_info
        self._tokenizer_info: Any = None  # made once, while the first server imports xgrammar
        self._time_limit_s = limits.time_limit_s
        self._max_in_flight = limits.max_in_flight
        self._memory_bytes = limits.memory_bytes
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._server: subprocess.Popen | None = None
        self._pending: dict[int, tuple[subprocess.Popen, concurrent.futures.Future]] = {}  # by compile id
        self._closed = False  # closed: no server is started again (a compile racing the engine's close fails)

    def compile(self, schema: str, stop: threading.Event | None = None) -> Any:
        """The compiled grammar; raises :class:`CompileFailedError`, :class:`CompileTimeoutError`,
        :class:`CompileAbandonedError` or :class:`CompileServerLostError`."""
        import xgrammar

        compile_id = next(self._ids)
        answer: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if len(self._pending) >= self._max_in_flight:
                raise CompileServerBusyError(
                    f"This replica is compiling {len(self._pending)} schemas; the limit is {self._max_in_flight} "
                    "(limits.max_schema_compiles)"
                )
            for attempt in range(2):
                server = self._running_server()
                try:
                    _send(server.stdin, {"op": "compile", "id": compile_id, "schema": schema, "time_limit_s": self._time_limit_s,
                                         "memory_bytes": self._memory_bytes})
                    break
                except (BrokenPipeError, ValueError):  # it died before its reader thread saw it: start another
                    self._server = None
                    if attempt:
                        raise
            self._pending[compile_id] = (server, answer)
        deadline = time.monotonic() + self._time_limit_s + _SERVER_GRACE_S
        while True:
            try:
                header, payload = answer.result(timeout=_POLL_S)
                break
            except concurrent.futures.TimeoutError:
                pass
            if stop is not None and stop.is_set():
                self._cancel(compile_id, server)
                raise CompileAbandonedError("The request ended before its grammar compiled; the compile was killed")
            if time.monotonic() > deadline:
                logger.error("The grammar compile server gave no answer %.0f s past the time limit; restarting it", _SERVER_GRACE_S)
                self._stop_server(server)
        if header["status"] == "ok":
            return xgrammar.CompiledGrammar.deserialize_json(payload.decode(), self._tokenizer_info)
        if header["status"] == "timeout":
            raise CompileTimeoutError(f"the compile ran past its time limit ({self._time_limit_s:g} s) and was stopped")
        if header["status"] == "lost":
            raise CompileServerLostError(header["reason"])
        raise CompileFailedError(header.get("reason", "the compiler gave no reason"))

    @property
    def server_pid(self) -> int | None:
        return self._server.pid if self._server is not None and self._server.poll() is None else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            server, self._server = self._server, None
        if server is not None:
            self._stop_server(server)

    def _running_server(self) -> subprocess.Popen:
        if self._server is not None and self._server.poll() is None:
            return self._server
        if self._closed:
            raise CompileServerLostError("the compile server was closed with its engine")
        server = _take_early_server() or _spawn_server()
        try:
            if self._tokenizer_info is None:
                self._tokenizer_info = self._make_tokenizer_info()
            _send(server.stdin, {"op": "tokenizer"}, self._tokenizer_info.serialize_json().encode())
        except BaseException:
            self._stop_server(server)
            raise
        threading.Thread(target=self._read_answers, args=(server,), name="grammar-answers", daemon=True).start()
        logger.info("Started the grammar compile server (pid %d)", server.pid)
        self._server = server
        return server

    def _read_answers(self, server: subprocess.Popen) -> None:
        while (message := _receive(server.stdout)) is not None:
            header, payload = message
            with self._lock:
                pending = self._pending.pop(header["id"], None)
            if pending is not None:
                pending[1].set_result((header, payload))
        code = server.wait()
        with self._lock:
            if self._server is server:
                self._server = None
            # Only this server's compiles: a compile sent to its successor meanwhile is still under way.
            orphans = [compile_id for compile_id, (sent_to, _) in self._pending.items() if sent_to is server]
            answers = [self._pending.pop(compile_id)[1] for compile_id in orphans]
        for answer in answers:
            answer.set_result(({"status": "lost", "reason": f"the compile server stopped (exit code {code})"}, b""))

    def _cancel(self, compile_id: int, server: subprocess.Popen) -> None:
        with self._lock:
            self._pending.pop(compile_id, None)
            if server.poll() is None:
                try:
                    _send(server.stdin, {"op": "cancel", "id": compile_id})
                except (BrokenPipeError, ValueError):
                    pass

    @staticmethod
    def _stop_server(server: subprocess.Popen) -> None:
        server.kill()
        server.wait()


# -- a server started early -----------------------------------------------------------------------

_early_server: subprocess.Popen | None = None  # one a process: a replica is a process, and one engine serves at a time
_early_server_lock = threading.Lock()


def start_server_early() -> None:
    """Start a compile server now, before any engine exists, so that its import of xgrammar (seconds) runs beside
    the model's load. The first :class:`GrammarCompileProcess` of this process to need a server takes it and
    sends it the tokenizer; until then it waits on its stdin."""
    global _early_server
    with _early_server_lock:
        if _early_server is None or _early_server.poll() is not None:
            _early_server = _spawn_server()
            logger.info("Started the grammar compile server early (pid %d), beside the model's load", _early_server.pid)


def stop_early_server() -> None:
    """Stop the early server if no engine took it (an engine that compiles no grammar, or a replica that closed)."""
    server = _take_early_server()
    if server is not None:
        server.kill()
        server.wait()


def _take_early_server() -> subprocess.Popen | None:
    global _early_server
    with _early_server_lock:
        server, _early_server = _early_server, None
    if server is not None and server.poll() is not None:
        return None
    return server


def _spawn_server() -> subprocess.Popen:
    root = pathlib.Path(__file__).resolve().parent.parent
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "models.decoding.grammar_server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env=environment, cwd=root,
    )


# -- the server ------------------------------------------------------------------------------------


_PR_SET_PDEATHSIG = 1
_protocol_fd = -1


class _Job:
    def __init__(self, compile_id: int, pid: int, deadline: float) -> None:
        self.compile_id = compile_id
        self.pid = pid
        self.deadline = deadline
        self.chunks: list[bytes] = []


def _limit_resources(time_limit_s: float, memory_bytes: int) -> None:
    """The grandchild's own limits: its address space may grow ``memory_bytes`` past the server's (what it shares
    from the fork counts already), its CPU time stops it a second past the time limit even should the server
    miss the deadline, and it runs at a lower priority than the replica's generation."""
    page_bytes = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as statm:
        address_space_bytes = int(statm.read().split()[0]) * page_bytes
    limit = address_space_bytes + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu_s = math.ceil(time_limit_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    os.nice(5)


def _compile_in_grandchild(tokenizer_info: Any, schema: str, write_fd: int, time_limit_s: float, memory_bytes: int) -> None:
    """Runs in the forked grandchild: compile, write ``ok``/``error`` and the payload, exit without cleanup.
    It dies with the server (``PR_SET_PDEATHSIG``) and holds none of the server's pipes to the replica."""
    import ctypes

    import xgrammar

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, _protocol_fd):
        os.dup2(devnull, fd)
    try:
        _limit_resources(time_limit_s, memory_bytes)
        compiler = xgrammar.GrammarCompiler(tokenizer_info, max_threads=1, cache_enabled=False)
        out = b"ok\n" + compiler.compile_json_schema(schema, any_whitespace=False).serialize_json().encode()
    except BaseException as error:  # noqa: BLE001 - xgrammar reports a bad schema as RuntimeError or ValueError
        out = b"error\n" + (str(error).splitlines() or [type(error).__name__])[-1].split("] ", 1)[-1][:300].encode()
    with os.fdopen(write_fd, "wb") as pipe:
        pipe.write(out)
    os._exit(0)


def _serve() -> None:
    global _protocol_fd
    # The protocol gets its own copy of stdout; fd 1 goes to stderr, so nothing a library prints can break it.
    _protocol_fd = os.dup(1)
    os.dup2(2, 1)
    import xgrammar

    stdout = os.fdopen(_protocol_fd, "wb")
    stdin_fd = sys.stdin.fileno()  # read raw: a buffered reader would hide bytes already read from select
    incoming = bytearray()
    messages: list[tuple[dict[str, Any], bytes]] = []
    while not messages:
        data = os.read(stdin_fd, 1 << 20)
        if not data:
            return
        incoming += data
        messages = _complete_messages(incoming)
    (first_header, first_payload), queued = messages[0], messages[1:]
    if first_header.get("op") != "tokenizer":
        raise SystemExit("the grammar server needs the tokenizer first")
    tokenizer_info = xgrammar.TokenizerInfo.deserialize_json(first_payload.decode())
    jobs: dict[int, _Job] = {}  # by the read end of the grandchild's pipe
    for header, _ in queued:
        _command(header, jobs, tokenizer_info)
    while True:
        now = time.monotonic()
        wait_s = max(0.0, min((job.deadline for job in jobs.values()), default=now + 3600) - now)
        readable, _, _ = select.select([stdin_fd, *jobs], [], [], wait_s)
        for fd in readable:
            if fd == stdin_fd:
                data = os.read(stdin_fd, 1 << 20)
                if not data:  # the replica is gone
                    for job in jobs.values():
                        _kill(job.pid)
                    return
                incoming += data
                for header, _ in _complete_messages(incoming):
                    _command(header, jobs, tokenizer_info)
            elif fd in jobs:
                data = os.read(fd, 1 << 20)
                if data:
                    jobs[fd].chunks.append(data)
                    continue
                job = jobs.pop(fd)
                os.close(fd)
                _, status = os.waitpid(job.pid, 0)
                status_word, _, payload = b"".join(job.chunks).partition(b"\n")
                if status_word == b"ok":
                    _send(stdout, {"id": job.compile_id, "status": "ok"}, payload)
                else:
                    reason = payload.decode(errors="replace") if status_word == b"error" else (
                        f"the compiler process died (status {status}: past its CPU or memory limit, or killed)")
                    _send(stdout, {"id": job.compile_id, "status": "error", "reason": reason})
        now = time.monotonic()
        for read_fd, job in list(jobs.items()):
            if now >= job.deadline:
                _kill(job.pid)
                os.close(read_fd)
                del jobs[read_fd]
                _send(stdout, {"id": job.compile_id, "status": "timeout"})


def _command(header: dict[str, Any], jobs: dict[int, _Job], tokenizer_info: Any) -> None:
    """``compile``: fork a grandchild for it; ``cancel``: kill the compile's grandchild, if it still runs."""
    if header["op"] == "compile":
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(read_fd)
                _compile_in_grandchild(tokenizer_info, header["schema"], write_fd, header["time_limit_s"],
                                       header.get("memory_bytes", 2 * 2**30))
            finally:
                os._exit(1)  # never back into the server's loop, whatever happened
        os.close(write_fd)
        jobs[read_fd] = _Job(header["id"], pid, time.monotonic() + header["time_limit_s"])
    elif header["op"] == "cancel":
        for read_fd, job in list(jobs.items()):
            if job.compile_id == header["id"]:
                _kill(job.pid)
                os.close(read_fd)
                del jobs[read_fd]


def _complete_messages(buffer: bytearray) -> list[tuple[dict[str, Any], bytes]]:
    """The whole messages at the front of ``buffer``, removed from it."""
    messages = []
    while (end := buffer.find(b"\n")) >= 0:
        header = json.loads(buffer[:end])
        if len(buffer) < end + 1 + header["bytes"]:
            break
        payload = bytes(buffer[end + 1 : end + 1 + header["bytes"]])
        del buffer[: end + 1 + header["bytes"]]
        messages.append((header, payload))
    return messages


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


if __name__ == "__main__":
    _serve()
