"""An adapter for random-weight reference models, which ship no processor: weights only."""

import transformers

from memory.strategy import LoadStrategy
from models.adapters.hf_adapter import HuggingFaceVisionLanguageAdapter


class WeightsOnlyAdapter(HuggingFaceVisionLanguageAdapter):
    """Loads the weights exactly as the real adapter does, and skips the processor."""

    def load(self) -> None:
        self._model = transformers.AutoModelForImageTextToText.from_pretrained(
            self._model_path, **self.strategy.from_pretrained_kwargs()
        )


def weights_only_adapter(path: str, strategy: LoadStrategy) -> WeightsOnlyAdapter:
    return WeightsOnlyAdapter(path, strategy=strategy)
