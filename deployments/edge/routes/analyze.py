"""``/v1/analyze``: a video and a question in one multipart request (:mod:`deployments.edge.analyze`), answered
whole or, with ``stream=true``, as server-sent events (:mod:`deployments.edge.analyze_stream`)."""

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from deployments.edge.analyze import PreparedAnalysis, analyze_body, prepare_analysis
from deployments.edge.analyze_stream import analysis_events
from deployments.edge.http_app import app, request_id_of
from deployments.edge.routes.base import IngressBase, served_by_headers


class AnalyzeRoutes(IngressBase):
    @app.post("/v1/analyze")
    async def analyze(self, request: Request) -> Response:
        """A video file (multipart field ``video``) and a ``question``."""
        owner = self._authorize(request)
        request_id = request_id_of(request)
        prepared = await prepare_analysis(
            request, request_id=request_id, config=self._config, files=self._files, owner=owner,
            check_served_model=self._check_served_model,
        )
        with self._interactive.request():  # checked and decoded: from here it waits on the groups, as a person does
            return await self._analyze(prepared, request_id)

    async def _analyze(self, prepared: PreparedAnalysis, request_id: str) -> Response:
        if prepared.fields.stream:
            opened, stream = await self._with_api_errors(
                self._router.open_stream("generate_stream", prepared.generation_request)
            )
            events = self._interactive.counted(
                analysis_events(prepared, opened, stream, request_id=request_id, model_id=self._model_id)
            )
            headers = {**served_by_headers(opened.served_by), "cache-control": "no-cache"}
            return StreamingResponse(events, media_type="text/event-stream", headers=headers)
        answer = await self._generate(prepared.generation_request)
        body = analyze_body(prepared, answer, request_id=request_id, model_id=self._model_id)
        return JSONResponse(body, headers=served_by_headers(answer.served_by, answer.inference_seconds))
