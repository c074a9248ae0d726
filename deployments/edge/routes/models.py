"""``/v1/models``: the one model served, with ``max_model_len`` (the plan's: a request's prompt and answer)."""

from typing import Any

from fastapi import Request

from deployments.edge.http_app import app
from deployments.edge.openai_schema import model_body, model_list_body
from deployments.edge.routes.base import IngressBase


class ModelRoutes(IngressBase):
    @app.get("/v1/models")
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return model_list_body(self._model_id, self._started, self._max_model_len)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(self, model_id: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        self._check_served_model(model_id)
        return model_body(self._model_id, self._started, self._max_model_len)
