"""Each engine lists the decoding options it honours, and the list is what its mapping reads: an option added to
``DecodingOptions`` and mapped by no engine is refused by name on every engine, never ignored in silence.

The check reads the engines' source (no vLLM import: vLLM's mapping is checked without its environment): every
``<...>options.<field>`` read in the files where an engine turns options into behaviour."""

import ast
import dataclasses
import pathlib

import pytest

from models.engines.contract import first_unhonoured_option
from models.engines.transformers.scheduler import HONOURED_OPTIONS as TRANSFORMERS_OPTIONS
from models.engines.transformers.serial_scheduler import SerialScheduler
from models.engines.vllm.options import HONOURED_OPTIONS as VLLM_OPTIONS
from models.requests import ChatMessage, DecodingOptions, GenerationRequest, TextPart

pytestmark = pytest.mark.unit

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIELDS = frozenset(field.name for field in dataclasses.fields(DecodingOptions))
ENGINES = {
    "transformers": (TRANSFORMERS_OPTIONS, ("models/decoding/token_sampler.py", "models/decoding/answer_builder.py", "models/engines/transformers/scheduler.py")),
    "vllm": (VLLM_OPTIONS, ("models/engines/vllm/inputs.py",)),
    "serial": (SerialScheduler.capabilities.decoding_options, ("models/engines/transformers/serial_scheduler.py",)),
}


def _options_read(path: str) -> set[str]:
    """The DecodingOptions fields the file reads off an ``options`` value (``options.x``, ``request.options.x``,
    ``self._options.x``)."""
    read = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Attribute) and node.attr in FIELDS:
            owner = node.value
            name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
            if name.lstrip("_") == "options":
                read.add(node.attr)
    return read


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_an_engine_honours_exactly_the_options_its_mapping_reads(engine):
    honoured, files = ENGINES[engine]

    read = set().union(*(_options_read(path) for path in files))

    assert honoured <= FIELDS, f"{engine} lists options DecodingOptions does not have: {sorted(honoured - FIELDS)}"
    assert read == honoured, (f"{engine}: listed but never read {sorted(honoured - read)}; read but not listed "
                              f"{sorted(read - honoured)}")


def test_the_check_finds_an_option_read_in_the_mapping():
    """The scan sees the reads it is meant to see: the sampler reads top_k, and vLLM's mapping names it."""
    assert "top_k" in _options_read("models/decoding/token_sampler.py") and "top_k" in _options_read("models/engines/vllm/inputs.py")
    assert _options_read("models/engines/transformers/serial_scheduler.py") == set()


def test_an_option_an_engine_does_not_list_is_refused_by_name():
    request = GenerationRequest(messages=(ChatMessage("user", (TextPart("hi"),)),), options=DecodingOptions(top_k=5))

    assert first_unhonoured_option(request, TRANSFORMERS_OPTIONS - {"top_k"}) == "top_k"
    assert first_unhonoured_option(request, TRANSFORMERS_OPTIONS) is None
    assert first_unhonoured_option(request, SerialScheduler.capabilities.decoding_options) == "top_k"
