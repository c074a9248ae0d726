"""Pick each row's next token from its logits, with that request's own settings and seed.

Greedy at temperature 0; otherwise softmax sampling at the request's temperature from
a ``torch.Generator`` seeded with the request's seed, so a seeded request gives the
same answer whatever else shares its batch.
"""

import torch

from models.base import GenerationRequest


class TokenSampler:
    """One request's sampling state."""

    def __init__(self, request: GenerationRequest, device: torch.device) -> None:
        self._temperature = request.temperature
        self._generator: torch.Generator | None = None
        if self._temperature > 0:
            self._generator = torch.Generator(device=device)
            if request.seed is not None:
                self._generator.manual_seed(request.seed)
            else:
                self._generator.seed()

    def next_token(self, logits: torch.Tensor) -> int:
        """``logits``: this row's ``(vocab,)`` scores for the next position."""
        if self._generator is None:
            return int(torch.argmax(logits))
        probabilities = torch.softmax(logits.float() / self._temperature, dim=-1)
        return int(torch.multinomial(probabilities, 1, generator=self._generator))
