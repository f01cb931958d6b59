"""Liveness and readiness. No auth: probes must reach them.

The Open Inference Protocol's bodies (`{"live": true}`, `{"ready": true}`) with the status
code as the answer (200 true; not ready: 503 with Retry-After, the body also carrying the
protocol's `{"error": ...}`), so KServe's clients (which read the fields), Triton's (which
read the status code) and Kubernetes probes all agree. `/health` is plain liveness."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import BackendDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(backend: BackendDep, settings: SettingsDep):
    if await backend.is_ready():
        return {"ready": True}
    return JSONResponse({"ready": False, "error": "The server is not ready: the model is loading or no replica runs."},
                        status_code=503, headers={"Retry-After": str(settings.retry_after_s)})
