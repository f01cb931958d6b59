"""Ray Serve application: SpeechIngress (the FastAPI app and Triton's gRPC service) ->
SpeechReplica (one card each, deployments/replica.py).

`build_app(args)` is what `serve run serve_config.yaml` / `serve deploy` and KubeRay's
serveConfigV2 import.
"""

from __future__ import annotations

import logging
import os

from ray import serve
from ray.serve.grpc_util import RayServegRPCContext, gRPCInputStream
from ray.serve.handle import DeploymentHandle

from models.engine import StepHook
from observability.metrics import REQUEST_METRICS
from serve.app import create_app
from serve.settings import ServerSettings
from serve.v2.grpc_messages import pb
from serve.v2.grpc_service import UNARY, InferenceRPC, RpcStatus
from stores.voices import VoiceStore

from .metrics import RayMetrics
from .placement import AppArgs, engine_actor_options
from .priority import check_priority
from .replica import RayReplicas, ReplicaDeployment
from .router import by_headroom

log = logging.getLogger(__name__)
_EMPTY = {name: getattr(pb, f"{name}Response") for name in UNARY}


# I/O-bound: no CPU reserved. A stream passes through the ingress too, so it drains as long as
# the replicas do (Serve's default of 20 s would cut long streams on every redeploy).
# max_surge_percent: a new config starts the new ingress before the old one drains (no CPU
# reserved, so it always fits): readiness and the API never drop during a rolling update.
@serve.deployment(name="SpeechIngress", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512,
                  graceful_shutdown_timeout_s=120, max_surge_percent=100)
@serve.ingress()
class SpeechIngress:
    """The FastAPI app from serve.app.create_app, built per replica after __init__; and
    Triton's gRPC service (Serve's gRPC proxy calls the methods named as the RPCs, with
    `grpc_options` in serve_config.yaml): one-line forwards to the shared gRPC adapter."""

    def __init__(self, replicas: DeploymentHandle, server: dict) -> None:
        check_priority(log)  # streams pass through here: not below the host's daemons (priority.py)
        self.settings = ServerSettings(**server)
        self.store = VoiceStore(self.settings.voices_dir)
        self.metrics = RayMetrics(REQUEST_METRICS)
        self.backend = RayReplicas(replicas, self.metrics)
        self.rpc: InferenceRPC | None = None

    def __serve_build_asgi_app__(self):
        app = create_app(self.backend, self.store, self.settings, self.metrics)
        self.rpc = InferenceRPC(app.state.v2)
        return app

    async def _unary(self, name: str, request, grpc_context: RayServegRPCContext):
        reply = await self.rpc.unary(name, request, grpc_context.invocation_metadata())
        if isinstance(reply, RpcStatus):
            grpc_context.set_code(reply.code)
            grpc_context.set_details(reply.details)
            return _EMPTY[name]()
        return reply

    async def ServerLive(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ServerLive", request, grpc_context)

    async def ServerReady(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ServerReady", request, grpc_context)

    async def ModelReady(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelReady", request, grpc_context)

    async def ServerMetadata(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ServerMetadata", request, grpc_context)

    async def ModelMetadata(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelMetadata", request, grpc_context)

    async def ModelConfig(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelConfig", request, grpc_context)

    async def ModelStatistics(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelStatistics", request, grpc_context)

    async def ModelInfer(self, request, grpc_context: RayServegRPCContext):
        return await self._unary("ModelInfer", request, grpc_context)

    async def ModelStreamInfer(self, requests: gRPCInputStream, grpc_context: RayServegRPCContext):
        if (denied := self.rpc.authorize(grpc_context.invocation_metadata())) is not None:
            grpc_context.set_code(denied.code)
            grpc_context.set_details(denied.details)
            return
        async for response in self.rpc.stream(requests):
            yield response


def build_app(args: dict):
    """Application builder for `serve run` / `serve deploy` (args from serve_config.yaml).
    Serve requires a builder of exactly one parameter."""
    return build_app_with(args)


def build_app_with(args: dict, before_step: StepHook | None = None):
    """The application, with the replicas' engines given a `before_step` hook (tests inject
    faults with it; it is pickled by value)."""
    cfg = AppArgs.model_validate(args or {})
    for folder in ("voices_dir", "conversations_dir"):  # replicas do not share the driver's working directory
        if cfg.server.get(folder):
            cfg.server[folder] = os.path.abspath(cfg.server[folder])
    settings = ServerSettings(**cfg.server)
    # The replica's admission is the one queue (replica/admission.py): Serve sends it every stream
    # its rows and its waiting line can take, so Serve's own queue (max_queued_requests at each
    # handle) fills only while no replica can take a request (start-up, a node lost).
    replicas = ReplicaDeployment.options(
        ray_actor_options=engine_actor_options(cfg.engine, cfg.cpus_per_engine, cfg.card),
        max_ongoing_requests=cfg.engine.max_num_seqs + cfg.max_queued_requests,
        max_queued_requests=cfg.max_queued_requests,
        request_router_config=by_headroom(),
    ).bind(cfg.engine.model_dump(), cfg.replica.model_dump(), settings.voices_dir, before_step, cfg.server,
           cfg.max_queued_requests)
    return SpeechIngress.bind(replicas, cfg.server)
