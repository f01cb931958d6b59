"""How the ingress picks an engine replica for a request: the least busy of all of them.

Serve's default router asks two replicas chosen at random and takes the less busy one. That
suits many short requests over many replicas; speech is a few long streams over a few cards,
each card keeping only a handful of streams in real time. There two random choices often
leave a card idle while another carries two streams: four streams started one after another
on four replicas leave a card idle 7 times in 12, and 1 time in 36 two cards carry all four. A stream on a doubled card
runs in a batch of two for its whole length, and under real-time admission it can be the
stream that tips that card over its budget.

So every request asks every replica for its number of ongoing requests (one small actor
call each: a few per request, against seconds of audio) and goes to the one with the fewest;
ties are broken at random. The counts are asked afresh (unless this router asked within the
last FRESH_S, for a burst), not kept for Serve's default 10 s, so several ingresses (each with
its own router) see each other's streams.
Replicas that do not answer within Serve's probe deadline are left out of that choice, and a
replica at `max_ongoing_requests` is never chosen (the request waits in Serve's queue, as
with the default router).

A conversation's turn goes first to the replica that holds the conversation's cached prefix
(replica/conversations.py): the one its id hashes to among the running replicas (rendezvous
hashing, so each conversation keeps its replica while the set of replicas stays, and only
the conversations of a replica that left or joined move). When that replica is full the turn
goes to the least busy one, which computes the context from the store: the same audio, only
slower to start."""

from __future__ import annotations

import hashlib
import random
import time

from ray.serve.config import RequestRouterConfig
from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

# Counts this recent are taken from the router's cache, which counts this router's own sends: a
# burst routed within it does not probe once per request (concurrent probes all saw the same free
# slot, and the replica refused all but one of them: a refused request leaves Serve's queue count,
# so the queue bound let more in)
FRESH_S = 0.1


class LeastBusyRouter(FIFOMixin, RequestRouter):
    """A conversation's replica first; else the replica with the fewest ongoing requests,
    among all that answer (FIFO order)."""

    _probed_at = 0.0  # when every replica was last asked

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        now = time.monotonic()
        if now - self._probed_at > FRESH_S:  # probe every one now: fresh counts (other routers' streams too)
            self._probed_at = now
            for replica in candidate_replicas:
                self.replica_queue_len_cache.invalidate_key(replica.replica_id)
        # the last rank: Serve probes them all and takes the lowest count; the shuffle breaks ties
        ranks = [random.sample(candidate_replicas, len(candidate_replicas))]
        if candidate_replicas and (conversation := _conversation(pending_request)) is not None:
            ranks.insert(0, [home(conversation, candidate_replicas)])
        return ranks


def home(conversation: str, replicas: list[RunningReplica]) -> RunningReplica:
    """The replica a conversation hashes to (the highest hash of id and replica wins)."""
    return max(replicas, key=lambda r: hashlib.sha256(f"{conversation}/{r.replica_id.unique_id}".encode()).digest())


def _conversation(pending_request: PendingRequest | None) -> str | None:
    """The conversation a speech job continues (the first argument of `synthesize`), if any."""
    args = pending_request.args if pending_request is not None else ()
    return getattr(args[0], "conversation", None) if args else None


def least_busy() -> RequestRouterConfig:
    """The engine deployment's router option."""
    return RequestRouterConfig(request_router_class=f"{__name__}:{LeastBusyRouter.__name__}")
