"""The transformers engine's links in a replica: it runs everywhere the project's environment does, prices nothing
beside the weights (the group's activation reserve is priced for it), and loads through the checkpoint's adapter."""

import transformers

from memory.strategy import LoadStrategy
from models.adapters.base import CheckpointAdapter
from models.adapters.choice import adapter_factory
from models.engines.spec import LinkContext, LinkPrice


class TransformersLinks:
    def problem(self, model_path: str) -> tuple[str | None, str]:
        return None, f"transformers {transformers.__version__}"

    def usable(self, links: tuple[LoadStrategy, ...]) -> tuple[LoadStrategy, ...]:
        return links

    def price(self, link: LoadStrategy, context: LinkContext) -> LinkPrice:
        return LinkPrice()

    def make_adapter(
        self, model_path: str, link: LoadStrategy, context: LinkContext, weights_bytes: int
    ) -> CheckpointAdapter:
        make = adapter_factory(context.adapter_family, max_slice_nums=context.max_slice_nums,
                               weight_cache=context.weight_cache)
        return make(model_path, link)


LINKS = TransformersLinks()
