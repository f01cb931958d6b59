"""Liveness and readiness, Triton-style too. No auth: probes must reach them."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import BackendDep

router = APIRouter(tags=["health"])


@router.get("/health")
@router.get("/v2/health/live")
async def live() -> dict:
    return {"status": "ok"}


@router.get("/v2/health/ready")
async def ready(backend: BackendDep):
    if await backend.is_ready():
        return {"status": "ready"}
    return JSONResponse({"status": "loading"}, status_code=503)
