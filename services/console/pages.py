"""The console's open routes, which hold no call data: the page, the API's docs page, and the
health and readiness checks."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from services.console.deps import ConsoleDep

STATIC = Path(__file__).resolve().parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/docs", response_model=None)
async def docs(console: ConsoleDep) -> HTMLResponse | FileResponse:
    if not console.have_swagger:
        return HTMLResponse("Swagger UI is not installed; see /openapi.json", 404)
    # Its own page and script file (FastAPI's inlines the script, which the CSP forbids).
    return FileResponse(STATIC / "docs.html", media_type="text/html")


@router.get("/healthz")
async def healthz(console: ConsoleDep) -> JSONResponse:
    ok = await console.store.answers()
    return JSONResponse({"ok": ok}, 200 if ok else 503)


@router.get("/readyz")
async def readyz(console: ConsoleDep) -> JSONResponse:
    """Ready for new requests: not stopping, and Redis answers."""
    if console.stopping():
        return JSONResponse({"ready": False, "reason": "stopping"}, 503)
    ok = await console.store.answers()
    return JSONResponse(
        {"ready": ok} | ({} if ok else {"reason": "redis_unreachable"}), 200 if ok else 503
    )
