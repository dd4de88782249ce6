"""A client of Berth's JSON API (PORTAL-API.md), for scripts: `Client` (blocking) and `AsyncClient` (asyncio).

Needs only httpx and the standard library: it imports nothing of the server (cas, registry_core, adapters).
The command line over it is `berth-client` (cli.py).
"""

from berth_client.client import AsyncClient, Client, registry_url
from berth_client.errors import (
    BerthError,
    Conflict,
    Invalid,
    NotAllowed,
    NotFound,
    ProtocolError,
    Unauthorized,
    Unavailable,
)
from berth_client.values import (
    Child,
    Commit,
    ImageConfig,
    ImageDetail,
    Layer,
    Me,
    Project,
    Push,
    Referrer,
    Repository,
    Tag,
)

__all__ = [
    "AsyncClient", "BerthError", "Child", "Client", "Commit", "Conflict", "ImageConfig", "ImageDetail", "Invalid",
    "Layer", "Me", "NotAllowed", "NotFound", "Project", "ProtocolError", "Push", "Referrer", "Repository", "Tag",
    "Unauthorized", "Unavailable", "registry_url",
]
