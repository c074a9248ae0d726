"""``/v1/files``: OpenAI's Files API over the configured store (:mod:`deployments.files.service`)."""

import asyncio
from typing import Any, Literal

from fastapi import Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from deployments.edge.http_app import app
from deployments.edge.routes.base import IngressBase
from deployments.files.service import download_content_type


class FileRoutes(IngressBase):
    @app.post("/v1/files")
    async def create_file(self, request: Request) -> JSONResponse:
        """Multipart ``file`` and ``purpose``; the file object (OpenAI's shape) to use by its id."""
        body = await self._files.upload(request, self._authorize(request))
        self._metrics.files_uploaded.inc()
        return JSONResponse(body)

    @app.get("/v1/files")
    async def list_files(
        self,
        request: Request,
        purpose: str | None = None,
        limit: int = Query(default=10000, ge=1, le=10000),
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
    ) -> dict[str, Any]:
        return await self._files.list(self._authorize(request), purpose=purpose, limit=limit, order=order, after=after)

    @app.get("/v1/files/{file_id}")
    async def get_file(self, file_id: str, request: Request) -> dict[str, Any]:
        owner = self._authorize(request)
        return (await asyncio.to_thread(self._files.record, owner, file_id, "file_id")).to_openai()

    @app.get("/v1/files/{file_id}/content")
    async def file_content(self, file_id: str, request: Request) -> StreamingResponse:
        record, chunks = await self._files.content(self._authorize(request), file_id)
        headers = {
            "content-length": str(record.bytes),
            "content-disposition": f'attachment; filename="{record.id}"',
            "x-content-type-options": "nosniff",
        }
        return StreamingResponse(chunks, media_type=download_content_type(record), headers=headers)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(self, file_id: str, request: Request) -> dict[str, Any]:
        return await self._files.delete(self._authorize(request), file_id)
