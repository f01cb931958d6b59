"""How the ingress picks an engine replica for a stream: the one with the most real-time
headroom (interactive streams), the least busy one (batch streams).

Serve's default router asks two replicas chosen at random and takes the less busy one. That
suits many short requests over many replicas; speech is a few long streams over a few cards,
each card keeping only a handful of streams in real time, and each card learning its own
capacity (replica/realtime.py). There two random choices often leave a card idle while
another carries two streams (four streams started one after another on four replicas leave a
card idle 7 times in 12), and a stream sent to a card without headroom is refused there
while another card could have started it.

Every replica reports its routing stats (`SpeechReplica.record_routing_stats`, polled by
Serve's controller every ROUTING_STATS_PERIOD_S): its real-time capacity and its batch
streams. The router keeps each replica's ongoing requests fresh (it asks every replica
afresh at most every FRESH_S; within that, Serve's cache counts this router's own sends, so a
burst routed within it sees its own streams, and several ingresses see each other's within
FRESH_S). A replica's headroom is then its capacity less its interactive streams (ongoing
less batch). Interactive streams go to the replica with the most headroom (ties at random);
a replica without headroom comes last but is still a choice: its admission refuses the
stream at once with a Retry-After (replica/admission.py), so a stream never waits in Serve's
queue for headroom that the router believes is gone. Replicas whose stats are not in yet count
their free slots (`max_ongoing_requests` less ongoing). Batch streams go to the least busy
replica.

A conversation's turn goes first to the replica that holds the conversation's cached prefix
(replica/conversations.py): the one its id hashes to among the running replicas (rendezvous
hashing, so each conversation keeps its replica while the set of replicas stays, and only
the conversations of a replica that left or joined move), while that replica has headroom.
Without it the turn goes to the replica with the most headroom, which computes the context
from the store: the same audio, only slower to start."""

from __future__ import annotations

import hashlib
import random
import time
from itertools import groupby

from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from contract.job import RoutingKey

FRESH_S = 0.1  # ongoing counts older than this are asked afresh from every replica
ROUTING_STATS_PERIOD_S = 0.5  # how often Serve's controller polls each replica's routing stats
# Keys of the routing stats a replica reports (deployments/replica.py) and the router reads.
CAPACITY, BATCH = "capacity", "batch_streams"


class HeadroomRouter(FIFOMixin, RequestRouter):
    """A conversation's replica while it has headroom; else by headroom (interactive) or
    ongoing requests (batch), among all that answer (FIFO order)."""

    _probed_at = 0.0  # when every replica was last asked

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        now = time.monotonic()
        if now - self._probed_at > FRESH_S:  # fresh counts: other routers' streams too
            self._probed_at = now
            await self._probe_queue_lens(candidate_replicas, 0)
        job = pending_request.args[0] if pending_request is not None and pending_request.args else None
        key = getattr(job, "routing", None)  # a SpeechJob's typed key; other calls (add_voice, ...) have none
        if not isinstance(key, RoutingKey):
            key = RoutingKey("interactive", None)
        if key.priority == "batch":
            return [random.sample(candidate_replicas, len(candidate_replicas))]  # Serve takes the least busy
        room = {r.replica_id: self.headroom(r) for r in candidate_replicas}
        shuffled = random.sample(candidate_replicas, len(candidate_replicas))  # ties at random
        by_room = sorted(shuffled, key=lambda r: room[r.replica_id], reverse=True)
        ranks = [list(group) for _, group in groupby(by_room, key=lambda r: room[r.replica_id])]
        if key.home is not None:
            first = home(key.home, candidate_replicas)
            if room[first.replica_id] > 0:
                ranks.insert(0, [first])
        return ranks

    def headroom(self, replica: RunningReplica) -> int:
        """Interactive streams the replica could start now, as far as this router knows."""
        ongoing = self.replica_queue_len_cache.get(replica.replica_id)
        stats = replica.routing_stats or {}
        if CAPACITY not in stats:
            return replica.max_ongoing_requests - (ongoing or 0)
        interactive = max(0, (ongoing or 0) - int(stats.get(BATCH, 0)))
        return int(stats[CAPACITY]) - interactive


def home(conversation: str, replicas: list[RunningReplica]) -> RunningReplica:
    """The replica a conversation hashes to (the highest hash of id and replica wins)."""
    return max(replicas, key=lambda r: hashlib.sha256(f"{conversation}/{r.replica_id.unique_id}".encode()).digest())


def routing_stats(capacity: int, batch_streams: int) -> dict[str, int]:
    """What a replica reports to the routers: its real-time capacity, and its batch streams
    (held and waiting: the ongoing requests that are not interactive)."""
    return {CAPACITY: int(capacity), BATCH: int(batch_streams)}


def by_headroom() -> RequestRouterConfig:
    """The engine deployment's router option."""
    return RequestRouterConfig(request_router_class=f"{__name__}:{HeadroomRouter.__name__}",
                               request_routing_stats_period_s=ROUTING_STATS_PERIOD_S,
                               request_routing_stats_timeout_s=5.0)
