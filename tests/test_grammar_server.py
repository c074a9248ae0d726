"""Grammar compiles in the replica's compile server (models/decoding/grammar_server.py), with the tiny model's real
tokenizer and real xgrammar: the time limit, abandonment when the request ends, and a server that dies."""

import json
import os
import threading
import time

import psutil
import pytest
import transformers
from polling import wait_for_condition

from models.decoding.grammar import GrammarCompiler
from models.decoding.grammar_server import (
    CompileAbandonedError,
    CompileServerBusyError,
    CompileServerLostError,
    SchemaCompileLimits,
)
from models.errors import InvalidParameterError
from models.requests import ResponseFormat

pytestmark = pytest.mark.component

# About 200 bytes that take seconds: a pattern's compile grows with its repetition count (400: 2.5 s here,
# 480: 3.8 s; from 512 on xgrammar builds it another way, in milliseconds); this one holds two of them.
_PATTERN = {"type": "string", "pattern": "^([a-z]{1,50}[0-9]{1,50}){1,480}$"}
SLOW = ResponseFormat("json_schema", json.dumps({"type": "object", "properties": {"a": _PATTERN, "b": _PATTERN}}))
EVENTS = ResponseFormat("json_schema", json.dumps({"type": "object", "properties": {"t": {"type": "number"}}, "required": ["t"]}))


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path):
    return transformers.AutoTokenizer.from_pretrained(tiny_model_path)


@pytest.fixture(scope="module")
def compiler(tokenizer):
    grammars = GrammarCompiler(tokenizer, len(tokenizer), (tokenizer.eos_token_id,), limits=SchemaCompileLimits(time_limit_s=1.0))
    yield grammars
    grammars.close()


def _grandchildren(compiler: GrammarCompiler) -> list[psutil.Process]:
    return psutil.Process(compiler._process.server_pid).children()


def _compiling_in_background(
    compiler: GrammarCompiler, response_format: ResponseFormat, stop: threading.Event | None = None
) -> tuple[threading.Thread, list[BaseException]]:
    """A compile started in a thread, returned once its forked compile runs; the list gets what ended it."""
    outcome: list[BaseException] = []

    def compile_it() -> None:
        try:
            compiler.compile(response_format, stop)
        except BaseException as error:  # noqa: BLE001 - the test reads what ended it
            outcome.append(error)

    worker = threading.Thread(target=compile_it)
    worker.start()
    wait_for_condition(lambda: _grandchildren(compiler), timeout_s=30, interval_s=0.02)
    return worker, outcome


def test_a_schema_compiles_in_the_server_to_a_grammar_that_masks(compiler, tokenizer):
    compiled = compiler.compile(EVENTS)
    state = compiler.new_state(compiled)

    assert compiler._process.server_pid not in (None, psutil.Process().pid)
    assert not state.complete
    assert compiler.compile(EVENTS) is compiled  # cached by the format


def test_a_compile_past_its_time_limit_is_stopped_and_refused_by_name_and_the_server_serves_on(compiler):
    compiler.compile(EVENTS)
    server = compiler._process.server_pid

    with pytest.raises(InvalidParameterError) as refused:
        compiler.compile(SLOW)

    assert refused.value.param == "response_format"
    assert "within 1 s (limits.max_schema_compile_s)" in str(refused.value)
    assert _grandchildren(compiler) == []  # the compile was killed
    again = time.perf_counter()
    with pytest.raises(InvalidParameterError):
        compiler.compile(SLOW)  # refused from the cache, not compiled again
    assert time.perf_counter() - again < 0.5
    other = ResponseFormat("json_schema", json.dumps({"type": "array", "items": {"type": "integer"}}))
    assert compiler.compile(other) is not None
    assert compiler._process.server_pid == server  # no restart


def test_a_compile_is_abandoned_when_its_request_ends(tokenizer):
    compiler = GrammarCompiler(tokenizer, len(tokenizer), (tokenizer.eos_token_id,), limits=SchemaCompileLimits(time_limit_s=600.0))
    try:
        compiler.compile(EVENTS)  # the server started
        stop = threading.Event()
        worker, outcome = _compiling_in_background(compiler, SLOW, stop)
        assert len(_grandchildren(compiler)) == 1  # compiling
        stop.set()
        worker.join(timeout=5)

        assert not worker.is_alive() and isinstance(outcome[0], CompileAbandonedError)
        wait_for_condition(lambda: _grandchildren(compiler) == [], timeout_s=5, interval_s=0.02)
    finally:
        compiler.close()


def test_a_dead_server_is_restarted_for_the_next_compile(compiler):
    compiler.compile(EVENTS)
    first = compiler._process.server_pid
    psutil.Process(first).kill()
    psutil.Process(first).wait(timeout=10) if psutil.pid_exists(first) else None

    compiled = compiler.compile(ResponseFormat("json_object"))

    assert compiled is not None
    assert compiler._process.server_pid not in (None, first)


def test_a_compile_lost_with_its_server_is_not_held_against_the_schema(compiler):
    compiler.compile(EVENTS)
    slow = ResponseFormat("json_schema", json.dumps({"type": "object", "properties": {"c": _PATTERN, "d": _PATTERN}}))
    worker, outcome = _compiling_in_background(compiler, slow)
    psutil.Process(compiler._process.server_pid).kill()
    worker.join(timeout=10)

    assert isinstance(outcome[0], CompileServerLostError)
    with pytest.raises(InvalidParameterError, match="within 1 s"):
        compiler.compile(slow)  # compiled again on a new server, and refused for its own cost this time


def test_compiles_past_the_replica_s_bound_are_turned_away_at_once_as_busy(tokenizer):
    limits = SchemaCompileLimits(time_limit_s=600.0, max_in_flight=1)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), (tokenizer.eos_token_id,), limits=limits)
    try:
        compiler.compile(EVENTS)
        stop = threading.Event()
        worker, _ = _compiling_in_background(compiler, SLOW, stop)
        renamed = ResponseFormat("json_schema", json.dumps({"type": "object", "properties": {"x": _PATTERN, "y": _PATTERN}}))
        asked = time.monotonic()
        with pytest.raises(CompileServerBusyError, match=r"compiling 1 schemas; the limit is 1 \(limits.max_schema_compiles\)"):
            compiler.compile(renamed)  # a renamed property defeats the caches, not the bound
        assert time.monotonic() - asked < 0.5
        assert len(_grandchildren(compiler)) == 1
        compiler.compile(EVENTS)  # a compiled schema needs no compile: still served
        stop.set()
        worker.join(timeout=5)
        assert compiler.compile(ResponseFormat("json_object")) is not None  # room again, and the refusal not kept
    finally:
        compiler.close()


def test_a_compile_past_its_memory_limit_is_refused_and_the_server_serves_on(tokenizer):
    limits = SchemaCompileLimits(time_limit_s=30.0, memory_bytes=1 * 2**20)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), (tokenizer.eos_token_id,), limits=limits)
    try:
        large = ResponseFormat("json_schema", json.dumps({"enum": [f"choice-{index:06d}" for index in range(20_000)]}))
        asked = time.monotonic()
        with pytest.raises(InvalidParameterError, match="does not compile to a grammar") as refused:
            compiler.compile(large)  # its grammar needs far more than 1 MiB more
        assert time.monotonic() - asked < 20  # stopped by the limit, long before the time limit
        assert any(word in str(refused.value) for word in ("bad_alloc", "MemoryError", "limit")), refused.value
        assert compiler.compile(EVENTS) is not None  # the server serves on
    finally:
        compiler.close()


_LIMITS_SCRIPT = """
import json, os, resource
from models.decoding.grammar_server import _limit_resources

nice_before = os.nice(0)
_limit_resources(2.2, 256 * 2**20)
try:
    bytearray(512 * 2**20)
    grew = True
except MemoryError:
    grew = False
print(json.dumps({"cpu": resource.getrlimit(resource.RLIMIT_CPU), "address_space": resource.getrlimit(resource.RLIMIT_AS)[0],
                  "grew": grew, "niced_by": os.nice(0) - nice_before}))
"""


def test_a_compile_s_process_has_its_cpu_and_address_space_limits():
    """In a fresh process, as the compile server is (a long-lived one may hold enough freed heap to allocate from
    without growing its address space)."""
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", _LIMITS_SCRIPT], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["cpu"] == [4, 5]  # a second past the time limit, rounded up
    assert seen["address_space"] > 256 * 2**20 and not seen["grew"]  # 512 MiB more than the server's is refused
    assert seen["niced_by"] == 5 or os.nice(0) >= 15  # niced, unless this process runs near the floor already
