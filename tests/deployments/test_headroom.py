"""The ingress's headroom view (deployments/headroom.py), on a fake poll and a fake clock."""

import asyncio

from deployments.headroom import Headroom, HeadroomView


def test_streams_go_on_within_the_replicas_headroom_and_are_refused_beyond_it():
    async def main():
        now, polls = [0.0], []
        reports = [[Headroom(2, 0.0), Headroom(1, 0.0)]]

        async def poll():
            polls.append(now[0])
            return reports[-1]

        view = HeadroomView(poll, fresh_s=0.2, refuse_fresh_s=0.05, clock=lambda: now[0])
        assert [(await view.admit()).admitted for _ in range(3)] == [True] * 3  # 2 + 1 places, one poll
        assert len(polls) == 1
        reports.append([Headroom(0, 3.5), Headroom(0, 1.5)])
        now[0] = 0.01
        refused = await view.admit()  # beyond the places, on a view 0.01 s old: refused on it
        assert not refused.admitted and len(polls) == 1
        now[0] = 0.1
        refused = await view.admit()  # a refusal needs a view at most 0.05 s old: asked again
        assert not refused.admitted and refused.retry_after_s == 1.5 and len(polls) == 2
        reports.append([Headroom(1, 0.0), Headroom(0, 2.0)])
        now[0] = 0.2
        assert (await view.admit()).admitted and len(polls) == 3  # a stream ended: its place is free again

    asyncio.run(main())


def test_without_an_answer_every_stream_goes_on_to_a_replica():
    async def main():
        async def poll():
            raise RuntimeError("no replica")

        view = HeadroomView(poll)
        assert (await view.admit()).admitted

    asyncio.run(main())
