"""Errors a request can end with, importable without torch (the ingress maps them to HTTP statuses)."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.requests import GenerationRequest


class PromptTooLongError(ValueError):
    """The request's prompt (text plus visual tokens) is over ``max_prompt_tokens``."""


def check_prompt_tokens(prompt_tokens: int, request: "GenerationRequest") -> None:
    """Raise :class:`PromptTooLongError`, with the figures, when ``prompt_tokens`` is over the request's limit."""
    if request.max_prompt_tokens is not None and prompt_tokens > request.max_prompt_tokens:
        raise PromptTooLongError(
            f"The prompt is {prompt_tokens} tokens ({request.num_video_frames} video frames, {request.num_images} "
            f"images and the text); the limit is {request.max_prompt_tokens}: send fewer frames or less text"
        )


class InvalidModelInputError(ValueError):
    """The processor refused the request's inputs (an image too thin to patch, say)."""


class RequestOutOfMemoryError(RuntimeError):
    """A request ran out of memory on this replica (or can never fit it); the replica keeps serving."""


class StreamOutOfMemoryError(Exception):
    """Out of memory after part of the answer was streamed: too late to retry smaller or elsewhere.

    Not a ``RuntimeError``, so the out-of-memory check (which reads ``RuntimeError`` messages) does not
    take it for a fresh out-of-memory and start the answer again.
    """


class ReplicaBusyError(RuntimeError):
    """The replica's waiting queue is full: back-pressure, not a fault; another replica or group may take it."""


class SchedulerClosedError(RuntimeError):
    """The replica stopped taking requests (unloaded, shutting down) before this one started; another may take it."""


class InvalidParameterError(ValueError):
    """A request parameter this replica cannot honour as given (a schema that does not compile, a token id
    past the vocabulary, an option the model's adapter does not support); ``param`` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param

    def __reduce__(self):  # Ray pickles errors across processes; keep both arguments
        return type(self), (self.param, str(self))
