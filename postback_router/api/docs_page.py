"""`/docs`: the OpenAPI document (/openapi.json) in Swagger UI, served from the installed package.

Swagger UI's static files come from the `swagger-ui-bundle-v2` package (the spec-first project's
bundle of the upstream release, which renders OpenAPI 3.1); nothing is loaded from the network. The
page's script is a file of ours (`/docs/init.js`), so the Content-Security-Policy allows scripts,
styles and connections from this origin only; images may also be `data:` URIs, which Swagger UI's
stylesheet uses for its icons. No token is needed for the page: it shows what /openapi.json shows.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui_bundle  # type: ignore[import-untyped]
from aiohttp import web

SWAGGER_UI_DIR = Path(swagger_ui_bundle.swagger_ui_path)
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# The package's files the page uses, with their types: a fixed list, so no path reaches the disk.
VENDOR_ASSETS = {
    "swagger-ui.css": "text/css",
    "index.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
INIT_SCRIPT = "init.js"
ASSETS = (*VENDOR_ASSETS, INIT_SCRIPT)

PAGE = """\
<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="UTF-8">
    <title>postback-router api</title>
    <link rel="stylesheet" type="text/css" href="/docs/swagger-ui.css">
    <link rel="stylesheet" type="text/css" href="/docs/index.css">
    <link rel="icon" type="image/png" href="/docs/favicon-32x32.png" sizes="32x32">
    <link rel="icon" type="image/png" href="/docs/favicon-16x16.png" sizes="16x16">
  </head>
  <body>
    <div id="swagger-ui"></div>
    <script src="/docs/swagger-ui-bundle.js" charset="UTF-8"></script>
    <script src="/docs/init.js" charset="UTF-8"></script>
  </body>
</html>
"""

# validatorUrl null: Swagger UI would otherwise fetch a badge from validator.swagger.io.
INIT = """\
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def add_docs_routes(app: web.Application) -> None:
    """GET /docs (the page) and GET /docs/{asset}; the package's files are read once, here."""
    vendor = {name: (SWAGGER_UI_DIR / name).read_bytes() for name in VENDOR_ASSETS}

    async def page(request: web.Request) -> web.StreamResponse:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8", headers=_HEADERS)

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["asset"]
        if name == INIT_SCRIPT:
            return web.Response(text=INIT, content_type="text/javascript", charset="utf-8", headers=_HEADERS)
        if name not in vendor:
            raise web.HTTPNotFound()
        headers = {**_HEADERS, "Cache-Control": "public, max-age=86400"}
        return web.Response(body=vendor[name], content_type=VENDOR_ASSETS[name], headers=headers)

    app.router.add_route("GET", "/docs", page)
    app.router.add_route("GET", "/docs/{asset}", asset)
