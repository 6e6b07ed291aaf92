"""/docs and /redoc work with no network: every asset they load is served by the app itself."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("src"):
            self.urls.append(str(found["src"]))
        if tag == "link" and found.get("href"):
            self.urls.append(str(found["href"]))


@pytest.mark.parametrize(("page", "expected"), [("/docs", 3), ("/redoc", 2)])
async def test_docs_page_loads_only_assets_served_by_the_app(
    client: httpx.AsyncClient, page: str, expected: int
) -> None:
    r = await client.get(page)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(r.text)
    assert len(parser.urls) == expected, parser.urls  # scripts, stylesheet, favicon
    # No absolute URL anywhere in the page: nothing is fetched from another host.
    assert re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", r.text) == []
    for url in parser.urls:
        assert url.startswith("/docs/assets/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    spec_url = "/openapi.json"
    assert spec_url in r.text
    assert (await client.get(spec_url)).json()["components"]["securitySchemes"]


async def test_swagger_ui_offers_authorize_for_api_keys(client: httpx.AsyncClient) -> None:
    # Swagger UI shows its Authorize button when the document declares security schemes.
    r = await client.get("/docs")
    assert '"persistAuthorization": true' in r.text
    spec = (await client.get("/openapi.json")).json()
    assert set(spec["components"]["securitySchemes"]) == {
        "ApiKeyBearer",
        "ApiKeyHeader",
        "OperatorToken",
    }
