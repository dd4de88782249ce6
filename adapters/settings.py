"""Every setting of `berth serve` in one place: a TOML file (read with tomllib), `BERTH_*` environment variables and
flags, in that order of strength: flag > environment > file > default.

Each table of the file is a frozen dataclass below; each key is one `_key(...)` declaration carrying its default,
bounds, environment variable and flag, with a comment saying where the default comes from. `berth serve` resolves
the settings once and exports every one of them as its environment variable before the server forks, so a worker
process reads the same values from its environment (`Settings.load(env=os.environ)`).

Mistakes are one `SettingsError` line naming the key and where the bad value came from (the file, a variable).
This module imports nothing heavy: `berth config check` stays quick and the server's limits are not read early.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from cas.store import BlobStore, StoreConfig
from registry_core.manifests import DEFAULT_MAX_MANIFEST
from registry_core.policy import BUILT_IN
from registry_core.tokens import TOKEN_LIFETIME

CONFIG_ENV = "BERTH_CONFIG"  # the file `berth serve` reads when --config is not given
_STORE = StoreConfig()
DAY = 86400.0


class SettingsError(ValueError):
    """A setting that cannot be used: the message names the key and the source of the value."""


def _key(default: Any, env: str | None = None, flag: str | None = None, low: float | None = None,
         high: float | None = None, choices: tuple[str, ...] = (), check: str | None = None) -> Any:
    """One setting: its default, the bounds its value must lie in, the environment variable and the flag that
    override it. `check` names a function of this module that validates a string further (listen, policy)."""
    return field(default=default, metadata={"env": env, "flag": flag, "low": low, "high": high,
                                            "choices": choices, "check": check})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    listen: str = _key("127.0.0.1:5000", "BERTH_LISTEN", "--listen", check="listen")  # loopback: never exposed by
    #                                                                     accident; 5000 is Distribution's own port
    workers: int = _key(0, "BERTH_WORKERS", "--workers", low=0, high=1024)  # 0: one per core (granian's advice)
    policy: str = _key("project", "BERTH_POLICY", "--policy", check="policy")  # logins and grants unless told
    public_url: str = _key("", "BERTH_PUBLIC_URL", "--public-url")  # "": the request's own Host
    forwarded_header: str = _key("", "BERTH_FORWARDED_HEADER", "--forwarded-header")  # "": trust no proxy header
    service: str = _key("berth", "BERTH_SERVICE")  # the token `service` (aud) clients ask for; Docker's own realm
    #                                                names it like this
    access_log: bool = _key(False, "BERTH_ACCESS_LOG", "--access-log")  # off: a line per request costs CPU
    pull_events: bool = _key(False, "BERTH_PULL_EVENTS", "--pull-events")  # off: it makes every pull a write


@dataclass(frozen=True, slots=True)
class StoreSettings:
    data: str = _key("./berth-data", "BERTH_DATA", "--data")  # relative to the working directory, as before
    max_manifest: int = _key(DEFAULT_MAX_MANIFEST, "BERTH_MAX_MANIFEST", "--max-manifest", low=1, high=1 << 30)
    #                     registry_core.manifests: distribution-spec requires at least 4 MiB be accepted
    grace: float = _key(_STORE.grace, "BERTH_STORE_GRACE", low=0, high=365 * DAY)  # cas StoreConfig: 24 h
    lease: float = _key(_STORE.lease, "BERTH_STORE_LEASE", low=0, high=365 * DAY)  # cas StoreConfig: 1 h
    upload_ttl: float = _key(_STORE.upload_ttl, "BERTH_UPLOAD_TTL", low=60, high=365 * DAY)  # cas StoreConfig: 24 h
    gc_interval: float = _key(3600.0, "BERTH_GC_INTERVAL", "--gc-interval", low=0, high=365 * DAY)  # seconds
    #                      between the server's collection passes (0: only `berth gc`); hourly frees space within an
    #                      hour of the 24 h grace, and a pass over a quiet store costs milliseconds

    # The distributed store (both or neither): the index in PostgreSQL, the bytes in an S3 bucket; "" keeps the
    # embedded default (LMDB and files in `data`). Credentials from the environment (libpq's PG*, AWS_*).
    metadata: str = _key("", "BERTH_METADATA", "--metadata")  # postgresql://user@host/db[?schema=berth]
    blobs: str = _key("", "BERTH_BLOBS", "--blobs")  # s3://bucket[/prefix][?endpoint=http://host:port]
    # A blob GET answers 307 to a presigned URL of the bucket instead of streaming the bytes through Berth (as
    # Distribution's `redirect` middleware does). Off: the bucket need not be reachable by clients.
    blobs_redirect: bool = _key(False, "BERTH_BLOBS_REDIRECT", "--blobs-redirect")

    def store_config(self) -> StoreConfig:
        return StoreConfig(grace=self.grace, lease=self.lease, upload_ttl=self.upload_ttl)

    def open_store(self, create: bool = True) -> BlobStore:
        """The store these settings name: the distributed one when `metadata` and `blobs` are set, else the
        embedded one in `data`. `create` False: a distributed store must exist already (StoreMissing; the CLI
        checks the embedded store's data directory itself)."""
        if bool(self.metadata) != bool(self.blobs):
            raise SettingsError("store.metadata (--metadata) and store.blobs (--blobs) go together: the distributed "
                                "store needs both, the embedded one neither")
        if self.blobs_redirect and not self.blobs:
            raise SettingsError("store.blobs_redirect (--blobs-redirect) redirects blob downloads to the object "
                                "store: it needs the distributed store (--metadata and --blobs s3://…); the "
                                "embedded store serves its files itself")
        if self.metadata:
            return BlobStore.distributed(self.metadata, self.blobs, config=self.store_config(), create=create)
        return BlobStore.on_disk(self.data, config=self.store_config())


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    # registry_core/bodies.py BodyLimits (tests/adapters/test_settings.py keeps these equal to its defaults):
    body_grace: float = _key(20.0, "BERTH_BODY_GRACE", low=0.001, high=3600)  # Apache mod_reqtimeout body=20
    body_min_rate: float = _key(500.0, "BERTH_BODY_MIN_RATE", low=0.001, high=1e12)  # mod_reqtimeout MinRate=500
    body_idle: float = _key(60.0, "BERTH_BODY_IDLE", low=0.001, high=3600)  # nginx client_body_timeout 60 s
    body_threads: int = _key(32, "BERTH_BODY_THREADS", low=1, high=1024)  # BodyLimits.threads, per process
    body_per_client: int = _key(8, "BERTH_BODY_PER_CLIENT", low=1, high=1024)  # above docker's 5 parallel uploads
    # registry_core.tokens: Docker's distribution issues 5-minute tokens; the token spec's floor is 60 s
    token_lifetime: int = _key(TOKEN_LIFETIME, "BERTH_TOKEN_LIFETIME", low=60, high=86400)


@dataclass(frozen=True, slots=True)
class LogSettings:
    # [server] access_log switches the access log (it is `--access-log`); [log] access is the same switch, kept for
    # a file that says everything about logs in one table. Either turns it on.
    access: bool = _key(False, "BERTH_LOG_ACCESS")
    format: str = _key("plain", "BERTH_LOG_FORMAT", "--log-format", choices=("plain", "json"))  # plain for a person
    level: str = _key("info", "BERTH_LOG_LEVEL", "--log-level",
                      choices=("debug", "info", "warning", "error", "critical"))  # info: what the server did


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    # The metrics endpoint (adapters/exposure.py): off, on the server's own port, never public by default. No
    # environment variables of their own: BERTH_METRICS and BERTH_METRICS_PUBLIC are how `berth serve` tells its
    # workers what exposure.prepare_serving decided (other values than a person would write).
    enabled: bool = _key(False, None, "--metrics")
    listen: str = _key("", None, "--metrics-listen", check="listen")  # "": the server's own port
    public: bool = _key(False, None, "--metrics-public")  # implies enabled


TABLES: dict[str, type[Any]] = {"server": ServerSettings, "store": StoreSettings, "limits": LimitsSettings,
                                "log": LogSettings, "metrics": MetricsSettings}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    limits: LimitsSettings = LimitsSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()

    @property
    def access_log(self) -> bool:
        return self.server.access_log or self.log.access

    @classmethod
    def load(cls, path: str | None = None, env: Mapping[str, str] | None = None,
             flags: Mapping[str, Any] | None = None) -> Settings:
        """Defaults, then the file (`path`, else $BERTH_CONFIG when `env` names one), then `env`, then `flags`
        (keyed by flag, e.g. "--listen"; a None value was not given)."""
        env = env or {}
        path = path or env.get(CONFIG_ENV) or None
        values: dict[str, dict[str, Any]] = {table: {} for table in TABLES}
        if path:
            values = _from_file(path)
        for table, key, meta, kind in declarations():
            if meta["env"] and meta["env"] in env:
                values[table][key] = _check(table, key, _parse(env[meta["env"]], kind, meta["env"]), meta,
                                            f"${meta['env']}")
            given = (flags or {}).get(meta["flag"]) if meta["flag"] else None
            if given is not None:
                values[table][key] = _check(table, key, given, meta, meta["flag"])
        return cls(**{table: TABLES[table](**values[table]) for table in TABLES})

    def sources(self, path: str | None, env: Mapping[str, str]) -> dict[tuple[str, str], str]:
        """Where each value came from, for `berth config check`: default, the file, or an environment variable."""
        in_file = _from_file(path) if path else {}
        where = {}
        for table, key, meta, _ in declarations():
            where[(table, key)] = (f"${meta['env']}" if meta["env"] and meta["env"] in env
                                   else "file" if key in in_file.get(table, {}) else "default")
        return where

    def environment(self) -> dict[str, str]:
        """Every setting as its environment variable: how `berth serve` hands them to its worker processes."""
        out = {}
        for table, key, meta, _ in declarations():
            value = getattr(getattr(self, table), key)
            if meta["env"]:
                out[meta["env"]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def declarations() -> list[tuple[str, str, dict[str, Any], type]]:
    """(table, key, metadata, type) of every setting, in the file's order."""
    out = []
    for table, kind in TABLES.items():
        hints = get_type_hints(kind)
        out += [(table, f.name, dict(f.metadata), hints[f.name]) for f in fields(kind)]
    return out


def _closest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"


def _from_file(path: str) -> dict[str, dict[str, Any]]:
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read it: {exc.strerror}") from None
    values: dict[str, dict[str, Any]] = {table: {} for table in TABLES}
    for table, content in document.items():
        if table not in TABLES:
            raise SettingsError(f"{path}: unknown table [{table}]{_closest(table, list(TABLES))}")
        if not isinstance(content, dict):
            raise SettingsError(f"{path}: {table} must be a table ([{table}]), not a value")
        known = {f.name: f for f in fields(TABLES[table])}
        hints = get_type_hints(TABLES[table])
        for key, value in content.items():
            if key not in known:
                raise SettingsError(f"{path}: [{table}] {key}: unknown key{_closest(key, list(known))}")
            values[table][key] = _check(table, key, _typed(value, hints[key], f"[{table}] {key}", path),
                                        dict(known[key].metadata), path)
    return values


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _typed(value: Any, kind: type, name: str, where: str) -> Any:
    """`value` as `kind`, from TOML: an int may stand for a float, nothing else converts."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise SettingsError(f"{where}: {name}: expected {_KINDS[kind]}, got {value!r} ({type(value).__name__})")
    return value


def _parse(text: str, kind: type, variable: str) -> Any:
    """An environment variable's text as `kind`."""
    try:
        if kind is bool:
            if text.strip().lower() not in _TRUE + _FALSE:
                raise ValueError
            return text.strip().lower() in _TRUE
        return kind(text)
    except ValueError:
        raise SettingsError(f"${variable}: expected {_KINDS[kind]}, got {text!r}") from None


def _check(table: str, key: str, value: Any, meta: dict[str, Any], where: str) -> Any:
    name = f"[{table}] {key}"
    low, high = meta["low"], meta["high"]
    if (low is not None and value < low) or (high is not None and value > high):
        raise SettingsError(f"{where}: {name}: must be between {low:g} and {high:g}, got {value!r}")
    if meta["choices"] and value not in meta["choices"]:
        raise SettingsError(f"{where}: {name}: must be one of {', '.join(meta['choices'])}, got {value!r}")
    if meta["check"] == "listen" and value:
        parse_listen(value, f"{where}: {name}")
    if meta["check"] == "policy" and (problem := policy_problem(value)):
        raise SettingsError(f"{where}: {name}: {problem}")
    return value


def policy_problem(text: str) -> str | None:
    """Why `text` names no policy: a built-in policy's name or module:callable (whether that imports is known once
    a registry is open)."""
    if text in BUILT_IN or ":" in text:
        return None
    return f"{' or '.join(BUILT_IN)}, or module:callable for a policy of your own; not {text!r}"


def parse_listen(text: str, name: str = "listen") -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host without brackets, port)."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{name}: HOST:PORT, e.g. 127.0.0.1:5000 or [::1]:5000, not {text!r}")
    return host.strip("[]"), int(port)


def workers(settings: Settings) -> int:
    return settings.server.workers or os.cpu_count() or 1


def render(settings: Settings, sources: Mapping[tuple[str, str], str] | None = None) -> str:
    """The effective settings as TOML (it loads back to the same values), each with where it came from."""
    lines: list[str] = []
    for table in TABLES:
        lines.append(f"{chr(10) if lines else ''}[{table}]")
        for key, value in dataclasses.asdict(getattr(settings, table)).items():
            text = ("true" if value else "false") if isinstance(value, bool) else (
                json.dumps(value) if isinstance(value, str) else repr(value))
            where = f"  # {sources[(table, key)]}" if sources else ""
            lines.append(f"{key} = {text}{where}")
    return "\n".join(lines) + "\n"
