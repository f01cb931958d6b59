"""An example bridge from a Twilio phone call to csm-serve: Twilio's Media Streams connect here
(TwiML `<Connect><Stream url="wss://your-host/twilio">`), the agent's reply is streamed as text
into csm-serve's socket with `response_format: "mulaw"` and `sample_rate: 8000`, and the binary
audio frames go back to the call as Twilio `media` messages, a `mark` after each reply (Twilio
echoes it once the caller has heard it). Barge-in: `interrupt()` cancels the reply on the server
(its row freed at once) and sends Twilio `clear`, so buffered audio stops too; here a DTMF key
press stands in for the caller talking over the agent (wire your STT's speech-start to it).

    python -m clients.twilio.bridge --api-url http://127.0.0.1:8000 --port 8765

The reply here is the call's `<Parameter name="text" value="...">` (and `voice`, `seed`), word by
word as an LLM would send it: replace `reply_text` with your agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import AsyncIterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from serve.speech_socket.events import ResponseCancel, SessionUpdate, TextAppend, TextCommit

from .messages import TWILIO_EVENTS, Clear, Dtmf, MarkName, MarkOut, MediaOut, Start, Stop

log = logging.getLogger(__name__)
BARGE_IN_DIGIT = "*"


async def reply_text(start: Start) -> AsyncIterator[str]:
    """The agent's reply, piece by piece (here: the call's `text` parameter, a word at a time)."""
    for word in start.start.custom_parameters.get("text", "Hello, how can I help?").split(" "):
        yield word + " "
        await asyncio.sleep(0)


class Call:
    """One phone call: the Twilio socket and its csm-serve socket."""

    def __init__(self, twilio: ServerConnection, api_url: str, api_key: str | None) -> None:
        self.twilio, self.api_url, self.api_key = twilio, api_url, api_key
        self.csm: ClientConnection | None = None
        self.stream_sid = ""
        self.replies = 0
        self.interrupted = False  # after a barge-in, the reply's audio still on its way is dropped

    async def run(self) -> None:
        speaking: asyncio.Task | None = None
        try:
            async for message in self.twilio:
                event = TWILIO_EVENTS.validate_json(message)
                if isinstance(event, Start):
                    self.stream_sid = event.start.stream_sid
                    await self._open(event)
                    speaking = asyncio.create_task(self._speak(event))
                elif isinstance(event, Dtmf) and event.dtmf.digit == BARGE_IN_DIGIT:
                    await self.interrupt()
                elif isinstance(event, Stop):
                    break
        except ConnectionClosed:
            pass
        finally:
            if speaking is not None:
                speaking.cancel()
                await asyncio.gather(speaking, return_exceptions=True)
            if self.csm is not None:
                await self.csm.close()

    async def _open(self, start: Start) -> None:
        url = self.api_url.replace("http", "ws", 1).rstrip("/") + "/v1/audio/speech/stream"
        protocols = ["csm-serve", *([f"bearer.{self.api_key}"] if self.api_key else [])]
        self.csm = await connect(url, subprotocols=protocols)
        params = start.start.custom_parameters
        session = {"response_format": "mulaw", "sample_rate": start.start.media_format.sample_rate,
                   "audio_transport": "binary", "voice": params.get("voice", "alloy"),
                   **({"seed": int(params["seed"])} if "seed" in params else {})}
        await self.csm.send(SessionUpdate(type="session.update", session=session).model_dump_json(exclude_unset=True))

    async def _speak(self, start: Start) -> None:
        assert self.csm is not None
        forward = asyncio.create_task(self._forward())
        async for piece in reply_text(start):
            await self.csm.send(TextAppend(type="input_text_buffer.append", text=piece).model_dump_json())
        await self.csm.send(TextCommit(type="input_text_buffer.commit").model_dump_json())
        await forward

    async def _forward(self) -> None:
        """csm-serve's audio to the call as it comes; a mark when a reply is done."""
        assert self.csm is not None
        async for message in self.csm:
            if isinstance(message, bytes):
                if not self.interrupted:  # after Twilio's clear, it would be played
                    await self.twilio.send(MediaOut.of(self.stream_sid, message).model_dump_json())
                continue
            event = json.loads(message)
            if event["type"] == "response.done":
                self.replies += 1
                name = f"reply-{self.replies}-{event['response']['status']}"
                await self.twilio.send(MarkOut(stream_sid=self.stream_sid, mark=MarkName(name=name)).model_dump_json())
                return
            if event["type"] == "error":
                log.warning("csm-serve: %s", event["error"]["message"])

    async def interrupt(self) -> None:
        """Barge-in: stop the reply on the server and drop what Twilio has buffered (and what
        the server had sent before it read the cancel)."""
        self.interrupted = True
        if self.csm is not None:
            await self.csm.send(ResponseCancel(type="response.cancel").model_dump_json())
        await self.twilio.send(Clear(stream_sid=self.stream_sid).model_dump_json())


async def run(api_url: str, host: str, port: int, api_key: str | None = None) -> None:
    async def handler(twilio: ServerConnection) -> None:
        await Call(twilio, api_url, api_key).run()

    async with serve(handler, host, port) as server:
        log.info("Twilio media streams on ws://%s:%d, speaking through %s", host, port, api_url)
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m clients.twilio.bridge", description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-url", default="http://127.0.0.1:8000")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(run(args.api_url, args.host, args.port, args.api_key))


if __name__ == "__main__":
    main()
