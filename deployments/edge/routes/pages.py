"""The pages for people (asking about a video at ``/``, the memory view at ``/ui/memory``) and the API description
(``/openapi.json``, ``/docs``; off with ``ingress.api_docs: false``)."""

from fastapi import Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deployments.edge.http_app import app
from deployments.edge.routes.base import IngressBase
from deployments.edge.web_pages import page_response, static_response
from deployments.errors import ApiError

# The Swagger page's own scripts and styles, from the CDN FastAPI names, and nothing else.
_DOCS_CSP = (
    "default-src 'none'; script-src https://cdn.jsdelivr.net 'unsafe-inline'; style-src https://cdn.jsdelivr.net "
    "'unsafe-inline'; img-src https://fastapi.tiangolo.com data:; connect-src 'self'"
)


class PageRoutes(IngressBase):
    @app.get("/", include_in_schema=False)
    async def ask_page(self, request: Request) -> Response:
        """The page to ask about a video; it calls the API routes, with the key a person types in."""
        return page_response("ask", request.scope.get("root_path", ""))

    @app.get("/ui/memory", include_in_schema=False)
    async def memory_page(self, request: Request) -> Response:
        """The live view of ``/v1/memory``."""
        return page_response("memory", request.scope.get("root_path", ""))

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def page_file(self, name: str, request: Request) -> Response:
        response = static_response(name)
        if response is None:
            raise ApiError(404, f"GET {request.url.path}: no such file", error_type="not_found_error")
        return response

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_schema(self, request: Request) -> JSONResponse:
        self._require_api_docs()
        self._authorize(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def api_docs_page(self, request: Request) -> HTMLResponse:
        self._require_api_docs()
        page = get_swagger_ui_html(openapi_url=f"{request.scope.get('root_path', '')}/openapi.json", title="video-detective API")
        page.headers["content-security-policy"] = _DOCS_CSP
        return page

    def _require_api_docs(self) -> None:
        if not self._config.ingress.api_docs:
            raise ApiError(404, "The API description is off here (ingress.api_docs: false); docs/api.md has the routes",
                           error_type="not_found_error", code="api_docs_off")
