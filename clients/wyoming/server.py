"""`csm-serve wyoming`: serve Wyoming TTS on a TCP port (or Unix socket), speaking through the
csm-serve HTTP API at --api-url. Options also come from the environment (CSM_WYOMING_*)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from functools import partial

from pydantic import ValidationError
from wyoming.server import AsyncServer

from .api import SpeechAPI, WyomingSettings
from .handler import SpeechEventHandler

log = logging.getLogger(__name__)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per API request


async def run(settings: WyomingSettings) -> None:
    api = SpeechAPI(settings)
    server = AsyncServer.from_uri(settings.uri)
    log.info("Wyoming TTS on %s, speaking through %s", settings.uri, settings.api_url)
    try:
        await server.run(partial(SpeechEventHandler, api=api))
    finally:
        await api.aclose()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, field in WyomingSettings.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", default=None, help=f"{field.description} (default: {field.default})")


def settings_from(args: argparse.Namespace) -> WyomingSettings:
    given = {name: getattr(args, name) for name in WyomingSettings.model_fields if getattr(args, name) is not None}
    try:  # pydantic converts and checks the strings; unset ones come from CSM_WYOMING_*
        return WyomingSettings(**given)
    except ValidationError as e:
        raise SystemExit(f"csm-serve wyoming: {e}") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="csm-serve wyoming", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    configure_logging()
    asyncio.run(run(settings_from(args)))


if __name__ == "__main__":
    main()
