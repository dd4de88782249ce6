"""What the portal's JSON API answers, as frozen values (the contract: PORTAL-API.md "Values").

Parsed once at the edge (`from_json`), so a caller never digs in dictionaries. Fields the server adds later are
ignored; a missing required field is a `ProtocolError`, never a KeyError deep in a caller's script. Times stay
`datetime` in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from berth_client.errors import NotFound, ProtocolError

__all__ = [
    "Child", "Commit", "ImageConfig", "ImageDetail", "Layer", "Me", "Project", "Push", "Referrer", "Repository",
    "Tag", "parse_time",
]

Json = Mapping[str, Any]


def parse_time(text: str) -> datetime:
    """An RFC 3339 time as the API writes it (`2026-12-02T03:40:00Z`, fractional seconds allowed), in UTC."""
    try:
        value = datetime.fromisoformat(text)  # Python 3.11 reads "Z" and any number of fraction digits
    except (TypeError, ValueError) as error:
        raise ProtocolError(f"not an RFC 3339 time: {text!r}") from error
    if value.tzinfo is None:
        raise ProtocolError(f"time without a zone: {text!r}")
    return value.astimezone(UTC)


def _time_or_none(value: Any) -> datetime | None:
    return None if value is None else parse_time(value)


def _field(data: Json, name: str, kind: type | tuple[type, ...]) -> Any:
    try:
        value = data[name]
    except (KeyError, TypeError) as error:
        raise ProtocolError(f"the server's answer lacks {name!r}") from error
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"the server's {name!r} is {type(value).__name__}, not what the API promises")
    return value


def _int(data: Json, name: str) -> int:
    """A count or a size; absent or null reads as 0 (the server may leave out what it does not know)."""
    value = data.get(name) if isinstance(data, Mapping) else None
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"the server's {name!r} is {type(value).__name__}, not a number")
    return value


def _strings(data: Json, name: str) -> tuple[str, ...]:
    return tuple(str(item) for item in _field(data, name, list))


@dataclass(frozen=True, slots=True)
class Me:
    user: str | None  # None: anonymous (principal `public`)
    admin: bool
    certified: bool
    scopes: tuple[str, ...] = ()  # the token's (view, download, modify); a session has every one

    @classmethod
    def from_json(cls, data: Json) -> Me:
        return cls(data.get("user"), bool(data.get("admin")), bool(data.get("certified")),
                   _strings(data, "scopes") if "scopes" in data else ())


@dataclass(frozen=True, slots=True)
class Project:
    id: str  # syn10001
    name: str
    owner: str
    trashed: bool
    created: datetime
    permission: str | None  # the caller's level (view, download, edit, edit-delete, admin)
    repositories: int

    @classmethod
    def from_json(cls, data: Json) -> Project:
        return cls(_field(data, "id", str), _field(data, "name", str), _field(data, "owner", str),
                   bool(data.get("trashed")), parse_time(_field(data, "created", str)), data.get("permission"),
                   _int(data, "repositories"))


@dataclass(frozen=True, slots=True)
class Push:
    time: datetime
    actor: str | None
    tag: str | None = None  # the tag that push moved


@dataclass(frozen=True, slots=True)
class Repository:
    name: str  # syn10001/tools
    project: str | None
    tags: int
    size: int  # deduplicated bytes of every blob its manifests reference
    last_push: Push | None
    trashed: bool
    permission: str | None

    @classmethod
    def from_json(cls, data: Json) -> Repository:
        last = data.get("last_push")
        push = None if last is None else Push(parse_time(_field(last, "time", str)), last.get("actor"),
                                              last.get("tag"))
        return cls(_field(data, "name", str), data.get("project"), _int(data, "tags"),
                   _int(data, "size"), push, bool(data.get("trashed")), data.get("permission"))


@dataclass(frozen=True, slots=True)
class Tag:
    tag: str
    digest: str
    media_type: str
    kind: str  # image, index or artifact
    platforms: tuple[str, ...]  # "linux/amd64"...; empty for an artifact
    size: int  # manifest + config + layers as stored; for an index the sum over its children
    pushed_at: datetime
    pushed_by: str | None

    @classmethod
    def from_json(cls, data: Json) -> Tag:
        return cls(_field(data, "tag", str), _field(data, "digest", str), str(data.get("media_type") or ""),
                   _field(data, "kind", str), _strings(data, "platforms") if "platforms" in data else (),
                   _int(data, "size"), parse_time(_field(data, "pushed_at", str)), data.get("pushed_by"))


@dataclass(frozen=True, slots=True)
class Commit:
    """One move of a tag: what it pointed at from `time` on (None: the tag was removed then)."""

    digest: str | None
    time: datetime
    actor: str | None

    @classmethod
    def from_json(cls, data: Json) -> Commit:
        digest = data.get("digest")
        if digest is not None and not isinstance(digest, str):
            raise ProtocolError("the server's 'digest' of a commit is not a string")
        return cls(digest, parse_time(_field(data, "time", str)), data.get("actor"))


@dataclass(frozen=True, slots=True)
class Child:
    """One manifest of an index."""

    digest: str
    media_type: str
    platform: str | None  # linux/arm64, linux/arm/v7; None when the index names none
    size: int

    @classmethod
    def from_json(cls, data: Json) -> Child:
        return cls(_field(data, "digest", str), str(data.get("media_type") or ""), data.get("platform"),
                   _int(data, "size"))


@dataclass(frozen=True, slots=True)
class ImageConfig:
    created: datetime | None
    os: str | None
    architecture: str | None
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    labels: Mapping[str, str]

    @classmethod
    def from_json(cls, data: Json) -> ImageConfig:
        def words(name: str) -> tuple[str, ...] | None:
            value = data.get(name)
            return None if value is None else tuple(str(word) for word in value)

        return cls(_time_or_none(data.get("created")), data.get("os"), data.get("architecture"), words("entrypoint"),
                   words("cmd"), dict(data.get("labels") or {}))

    @property
    def platform(self) -> str | None:
        return f"{self.os}/{self.architecture}" if self.os and self.architecture else None


@dataclass(frozen=True, slots=True)
class Layer:
    digest: str
    media_type: str
    size: int
    created_by: str | None  # the config's history line that made this layer (a Dockerfile step), when known

    @classmethod
    def from_json(cls, data: Json) -> Layer:
        return cls(_field(data, "digest", str), str(data.get("media_type") or ""), _int(data, "size"),
                   data.get("created_by"))


@dataclass(frozen=True, slots=True)
class Referrer:
    """A manifest whose `subject` is this one (a signature, an SBOM...)."""

    digest: str
    media_type: str
    artifact_type: str | None
    size: int

    @classmethod
    def from_json(cls, data: Json) -> Referrer:
        return cls(_field(data, "digest", str), str(data.get("media_type") or ""), data.get("artifact_type"),
                   _int(data, "size"))


@dataclass(frozen=True, slots=True)
class ImageDetail:
    """A manifest looked at closely: by tag (`tag` and `pushed_*` set) or by digest (they are None)."""

    digest: str
    media_type: str
    kind: str
    platforms: tuple[str, ...]
    size: int
    manifest_size: int
    artifact_type: str | None
    children: tuple[Child, ...]  # an index's manifests; empty otherwise
    config: ImageConfig | None
    layers: tuple[Layer, ...]
    referrers: tuple[Referrer, ...]
    tag: str | None = None
    pushed_at: datetime | None = None
    pushed_by: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)  # the manifest's own

    @classmethod
    def from_json(cls, data: Json) -> ImageDetail:
        config = data.get("config")
        return cls(
            _field(data, "digest", str), str(data.get("media_type") or ""), _field(data, "kind", str),
            _strings(data, "platforms") if "platforms" in data else (), _int(data, "size"),
            _int(data, "manifest_size"), data.get("artifact_type"),
            tuple(Child.from_json(c) for c in data.get("children") or ()),
            None if config is None else ImageConfig.from_json(config),
            tuple(Layer.from_json(layer) for layer in data.get("layers") or ()),
            tuple(Referrer.from_json(r) for r in data.get("referrers") or ()),
            data.get("tag"), _time_or_none(data.get("pushed_at")), data.get("pushed_by"),
            dict(data.get("annotations") or {}))

    def child(self, platform: str) -> Child:
        """The index's manifest for `platform` (`linux/arm64`; `linux/arm/v7` matches its variant too)."""
        for candidate in self.children:
            if candidate.platform == platform:
                return candidate
        known = ", ".join(c.platform or "?" for c in self.children) or "none: this is not an index"
        raise NotFound(f"no manifest for platform {platform} (platforms: {known})", status=404, code="NOT_FOUND")
