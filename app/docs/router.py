"""API docs (Swagger UI at /docs, Redoc at /redoc) served entirely by the app: no CDN, no network.

The JavaScript and CSS come from the ``fastapi-offline`` package's static folder, mounted under
``/docs/assets``; the HTML is FastAPI's own, pointed at those files.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"
_STATIC = Path(str(files("fastapi_offline") / "static"))


def install_docs(app: FastAPI, *, openapi_url: str = "/openapi.json") -> None:
    """Add /docs, /redoc and their assets to ``app`` (created with docs_url=redoc_url=None)."""
    title = f"{app.title} API"
    app.mount(ASSETS, StaticFiles(directory=_STATIC), name="docs-assets")

    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            # Keep the key entered under "Authorize" across reloads of the page.
            swagger_ui_parameters={"persistAuthorization": True, "tryItOutEnabled": True},
        )

    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    app.add_api_route("/docs", swagger_ui, include_in_schema=False)
    app.add_api_route("/redoc", redoc, include_in_schema=False)
