"""What a model replica sends back over a stream, and the errors it ends with: no torch here.

The ingress imports this module (and :mod:`models.errors`), never the replica's own module,
so it stays a small process without torch or transformers.

A call to ``generate_stream`` yields, in order:

1. :class:`StreamOpened` when the request was admitted and its first token exists (the
   admission timeout ends here; a busy replica is told from a broken one by this gap);
2. text pieces (:class:`~models.requests.TextDelta`), unless the caller asked for the whole answer only;
3. :class:`ReplicaAnswer`, the result with who served it and what the model saw.

That the replica was reached (the router's reachability timeout) is Serve's own answer: Serve hands a call
over only once the replica has said it has room (its ``max_ongoing_requests`` check), so the replica sends
nothing for it, and each request crosses Ray with one message fewer.
"""

import dataclasses

from models.media.request_shrink import OomRetry, RequestSize
from models.requests import GenerationResult


class ReplicaUnavailableError(RuntimeError):
    """This replica has no model to answer with (loading, waiting for memory, or failed)."""


@dataclasses.dataclass(frozen=True)
class ServedBy:
    group: str
    replica: str
    precision: str
    device: str


@dataclasses.dataclass(frozen=True)
class StreamOpened:
    """The request was admitted and its first token exists: who serves it, and what the model sees."""

    served_by: ServedBy
    used: RequestSize  # smaller than asked when it was shrunk to fit, or after out-of-memory retries
    predicted_bytes: int = 0
    prompt_tokens: int = 0  # 0 where the adapter counts them only at the end (its own generate loop)


@dataclasses.dataclass(frozen=True)
class ReplicaAnswer:
    result: GenerationResult
    served_by: ServedBy
    inference_seconds: float
    used: RequestSize  # what the model saw: smaller than asked after out-of-memory retries
    oom_retries: tuple[OomRetry, ...] = ()
    used_timestamps_s: tuple[float, ...] = ()
    queued_seconds: float = 0.0
    predicted_bytes: int = 0
