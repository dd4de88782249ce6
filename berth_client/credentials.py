"""Where the client finds its personal access token: given, in BERTH_TOKEN, or where `podman login`/`docker login`
stored it for the registry's host (the user logs in once, for both the container tools and this client).

The files are read in the order podman reads them (containers-auth.json(5)), then Docker's: REGISTRY_AUTH_FILE,
${XDG_RUNTIME_DIR}/containers/auth.json (for root without XDG_RUNTIME_DIR, /run/containers/0/auth.json),
~/.config/containers/auth.json, then ${DOCKER_CONFIG:-~/.docker}/config.json. Each holds
`{"auths": {"HOST": {"auth": base64("user:token")}}}`; Berth ignores the user name, the token is the password.
A Docker credential helper (`credsStore`/`credHelpers`) is asked as Docker asks it: `docker-credential-NAME get`
with the host on stdin.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from berth_client.errors import BerthError

__all__ = ["Credential", "auth_files", "find", "host_of", "read_auth_file", "store"]

ENVIRONMENT = "BERTH_TOKEN"


@dataclass(frozen=True, slots=True)
class Credential:
    token: str
    source: str  # where it came from, for `berth-client login` to say (never the token itself)
    user: str | None = None


def host_of(url: str) -> str:
    """The key a credentials file uses for a registry URL: host[:port], as `podman login HOST` writes it."""
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.netloc or parts.path.split("/")[0]


def auth_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The credentials files in the order they are looked at (the first holding the host wins)."""
    env = os.environ if environ is None else environ
    home = Path(env.get("HOME") or Path.home())
    found: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        found.append(Path(env["REGISTRY_AUTH_FILE"]))
    runtime = env.get("XDG_RUNTIME_DIR") or (f"/run/containers/{os.getuid()}" if os.getuid() == 0 else None)
    if runtime:
        found.append(Path(runtime) / "containers" / "auth.json")
    config = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else home / ".config"
    found.append(config / "containers" / "auth.json")
    found.append(Path(env["DOCKER_CONFIG"]) / "config.json" if env.get("DOCKER_CONFIG")
                 else home / ".docker" / "config.json")
    return found


def _normalised(key: str) -> str:
    """Docker writes `https://index.docker.io/v1/` style keys for some hosts, podman `host` or `host/namespace`:
    compare on the host alone."""
    return host_of(key)


def _entries(config: Mapping[str, Any], host: str) -> Iterator[Mapping[str, Any]]:
    auths = config.get("auths")
    if not isinstance(auths, Mapping):
        return
    exact = auths.get(host)
    if isinstance(exact, Mapping):
        yield exact
    for key, entry in auths.items():
        if key != host and isinstance(entry, Mapping) and _normalised(key) == host:
            yield entry


def _decode(auth: str) -> tuple[str, str] | None:
    try:
        user, sep, secret = base64.b64decode(auth, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, secret) if sep and secret else None


def _helper(name: str, host: str) -> tuple[str, str] | None:
    """A Docker credential helper's answer for `host` (docker-credential-helpers' `get` protocol)."""
    try:
        result = subprocess.run([f"docker-credential-{name}", "get"], input=host, capture_output=True, text=True,
                                timeout=30, check=False)
        if result.returncode != 0:
            return None
        answer = json.loads(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    secret = answer.get("Secret") if isinstance(answer, Mapping) else None
    return (str(answer.get("Username") or ""), secret) if isinstance(secret, str) and secret else None


def read_auth_file(path: Path, host: str) -> tuple[str, str] | None:
    """(user, token) stored for `host` in one credentials file, or None (no file, no entry, unreadable)."""
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, Mapping):
        return None
    for entry in _entries(config, host):
        if isinstance(entry.get("auth"), str) and (pair := _decode(entry["auth"])):
            return pair
    helpers = config.get("credHelpers")
    helper = helpers.get(host) if isinstance(helpers, Mapping) else None
    helper = helper or config.get("credsStore")
    if isinstance(helper, str) and helper:
        return _helper(helper, host)
    return None


def find(url: str, token: str | None = None, environ: Mapping[str, str] | None = None) -> Credential | None:
    """The credential to use for the registry at `url`, or None (anonymous: what `public` may see)."""
    if token:
        return Credential(token, "given")
    env = os.environ if environ is None else environ
    if env.get(ENVIRONMENT):
        return Credential(env[ENVIRONMENT], ENVIRONMENT)
    host = host_of(url)
    for path in auth_files(env):
        if pair := read_auth_file(path, host):
            return Credential(pair[1], str(path), pair[0])
    return None


def store(host: str, user: str, token: str, environ: Mapping[str, str] | None = None) -> Path:
    """Write the token where podman and docker both read it, REGISTRY_AUTH_FILE or else Docker's config.json (kept
    across reboots, unlike podman's ${XDG_RUNTIME_DIR} file), keeping the file's other entries. Mode 0600, replaced
    atomically: a reader never sees half a file."""
    env = os.environ if environ is None else environ
    path = Path(env["REGISTRY_AUTH_FILE"]) if env.get("REGISTRY_AUTH_FILE") else auth_files(env)[-1]
    try:
        config = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as error:
        raise BerthError(f"{path} is not a readable JSON file; not touching it") from error
    if not isinstance(config, dict) or not isinstance(config.setdefault("auths", {}), dict):
        raise BerthError(f"{path} is not a credentials file (no \"auths\" object); not touching it")
    config["auths"][host] = {"auth": base64.b64encode(f"{user}:{token}".encode()).decode()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".auth-")  # created 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f, indent=1)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path
