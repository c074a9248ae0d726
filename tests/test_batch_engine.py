"""The batched forward passes on the real tiny model: rows prefilled together or alone, joined at any step,
leaving when they end, give each request exactly the tokens ``generate`` gives it alone (greedy)."""

import pytest
import torch
from mixed_requests import mixed_requests

from models.decoding.detokenizer import IncrementalDetokenizer
from models.engines.transformers.kv_batch import KvBatch
from models.requests import GenerationRequest

pytestmark = pytest.mark.unit

NEW_TOKENS = 12


def _requests() -> list[GenerationRequest]:
    return mixed_requests(new_tokens=NEW_TOKENS)


@pytest.fixture(scope="module")
def alone(tiny_adapter):
    """Each request's greedy tokens from plain ``generate``, one request at a time."""
    tokens = []
    for request in _requests():
        inputs, prompt_tokens = tiny_adapter._prepare(request)
        output = tiny_adapter.model.generate(**inputs, **tiny_adapter._generation_kwargs(request))
        tokens.append(output[0, prompt_tokens:].tolist())
    return tokens


def decode_in_batch(engine, requests: list, groups_by_step: dict[int, list[int]]) -> list[list[int]]:
    """Decode greedily; at step k, prefill the requests ``groups_by_step[k]`` together and join them."""
    new_tokens = requests[0].max_new_tokens
    generated: list[list[int]] = [[] for _ in requests]
    batch: KvBatch | None = None
    rows: list[int] = []
    step = 0
    while step <= max(groups_by_step) or rows:
        if step in groups_by_step:
            group = groups_by_step[step]
            joined, logits = engine.prefill_many([engine.prepare(requests[index]) for index in group])
            first = torch.argmax(logits, dim=-1)
            joined.last_tokens = first
            for index, token in zip(group, first.tolist()):
                generated[index].append(token)
            batch = joined if batch is None else (batch.join(joined) or batch)
            rows += group
        if rows:
            next_tokens = torch.argmax(engine.decode(batch), dim=-1)
            batch.advance(next_tokens)
            keep = []
            for position, index in enumerate(rows):
                generated[index].append(int(next_tokens[position]))
                if len(generated[index]) < new_tokens and int(next_tokens[position]) not in engine.eos_ids:
                    keep.append(position)
            if len(keep) < len(rows):
                if keep:
                    batch.keep(keep)
                else:
                    batch = None
                rows = [rows[position] for position in keep]
        step += 1
    return generated


def test_mixed_media_prefilled_in_one_pass_decode_as_if_alone(tiny_adapter, alone):
    assert decode_in_batch(tiny_adapter.batch_engine(), _requests(), {0: [0, 1, 2, 3]}) == alone


def test_requests_joining_between_steps_and_leaving_at_their_end_decode_as_if_alone(tiny_adapter, alone):
    assert decode_in_batch(tiny_adapter.batch_engine(), _requests(), {0: [0], 3: [2], 4: [1, 3]}) == alone


def test_every_inputs_kind_of_the_tiny_model_batches(tiny_adapter):
    engine = tiny_adapter.batch_engine()
    assert all(engine.batchable(engine.prepare(request)) for request in _requests())


def test_the_detokenizer_streams_pieces_that_join_into_the_whole_text(tiny_adapter):
    tokenizer = tiny_adapter.batch_engine().tokenizer
    ids = tokenizer.encode("The camera pans left, then cuts to a kitchen.")
    detokenizer = IncrementalDetokenizer(tokenizer)

    pieces = [detokenizer.push(token) for token in ids]

    assert "".join(pieces) == detokenizer.text() == tokenizer.decode(ids, skip_special_tokens=True)
