"""The OpenAPI 3.1 document of the portal's JSON API, built from the endpoint table (api.ENDPOINTS) and the value
schemas below (PORTAL-API.md "Values")."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Endpoint

_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_LEVEL = {"type": ["string", "null"], "enum": ["view", "download", "edit", "edit-delete", "admin", None]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], required: Iterable[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "properties": properties,
            "required": list(properties if required is None else required)}


def _page(key: str, item: str) -> dict[str, Any]:
    return _object({key: {"type": "array", "items": _ref(item)}, "next": _NULLABLE_STR})


_TAG = {"tag": _STR, "digest": _STR, "media_type": _STR, "kind": {"type": "string", "enum": ["image", "index",
                                                                                           "artifact"]},
        "platforms": {"type": "array", "items": _STR}, "size": _INT, "pushed_at": _TIME, "pushed_by": _NULLABLE_STR}
_IMAGE = {
    "digest": _STR, "media_type": _STR, "kind": _TAG["kind"], "platforms": _TAG["platforms"], "size": _INT,
    "manifest_size": _INT, "artifact_type": _NULLABLE_STR,
    "annotations": {"type": "object", "additionalProperties": _STR},
    "children": {"type": "array", "items": _object({"digest": _STR, "media_type": _STR, "platform": _NULLABLE_STR,
                                                    "size": _INT})},
    "config": {"oneOf": [{"type": "null"}, _object({
        "created": _NULLABLE_TIME, "os": _NULLABLE_STR, "architecture": _NULLABLE_STR,
        "entrypoint": {"type": ["array", "null"], "items": _STR}, "cmd": {"type": ["array", "null"], "items": _STR},
        "labels": {"type": "object", "additionalProperties": _STR}})]},
    "layers": {"type": "array", "items": _object({"digest": _STR, "media_type": _STR, "size": _INT,
                                                  "created_by": _NULLABLE_STR})},
    "referrers": {"type": "array", "items": _object({"digest": _STR, "media_type": _STR,
                                                     "artifact_type": _NULLABLE_STR, "size": _INT})},
}
_TOKEN = {"id": _STR, "label": _NULLABLE_STR, "scopes": {"type": "array", "items": _STR}, "created": _TIME,
          "expires": _NULLABLE_TIME, "last_used": _NULLABLE_TIME, "revoked": _BOOL}
_ACCOUNT = {"name": _STR, "certified": _BOOL, "admin": _BOOL, "disabled": _BOOL, "created": _TIME,
            "password": {"type": "boolean", "description": "whether the account has a password"}}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": _object({"code": {"type": "string", "enum": [
        "UNAUTHORIZED", "DENIED", "NOT_FOUND", "INVALID", "CONFLICT", "TOO_MANY_REQUESTS", "UNAVAILABLE"]},
        "message": _STR})}),
    "Me": _object({"user": _NULLABLE_STR, "admin": _BOOL, "certified": _BOOL,
                   "scopes": {"type": "array", "items": _STR}}),
    "Project": _object({"id": _STR, "name": _STR, "owner": _STR, "trashed": _BOOL, "created": _TIME,
                        "permission": _LEVEL, "repositories": _INT}),
    "ProjectPage": _page("projects", "Project"),
    "NewProject": _object({"name": _STR}),
    "Repository": _object({"name": _STR, "project": _NULLABLE_STR, "tags": _INT, "size": _INT,
                           "last_push": {"oneOf": [{"type": "null"}, _object(
                               {"time": _TIME, "actor": _NULLABLE_STR, "tag": _STR})]},
                           "trashed": _BOOL, "permission": _LEVEL}),
    "RepositoryPage": _page("repositories", "Repository"),
    "Tag": _object(_TAG),
    "TagPage": _page("tags", "Tag"),
    "TagDetail": _object({**_TAG, **_IMAGE}),
    "ImageDetail": _object(_IMAGE),
    "SynapseTags": _object({"totalNumberOfResults": _INT, "results": {"type": "array", "items": _object(
        {"tag": _STR, "digest": _STR, "createdOn": _TIME})}}),
    "History": _object({"history": {"type": "array", "items": _object(
        {"digest": _NULLABLE_STR, "time": _TIME, "actor": _NULLABLE_STR})}}),
    "Grant": _object({"principal": _STR, "level": _LEVEL, "inherited_from": _NULLABLE_STR,
                      "source": {"type": "string", "enum": ["owner", "local", "inherited", "ignored"]},
                      "in_force": _BOOL}),
    "Sharing": _object({"grants": {"type": "array", "items": _ref("Grant")}}),
    "Level": _object({"level": _LEVEL}),
    "TokenInfo": _object(_TOKEN),
    "Tokens": _object({"tokens": {"type": "array", "items": _ref("TokenInfo")}}),
    "TokenRequest": _object({"scopes": {"type": "array", "items": {"type": "string", "enum": [
        "view", "download", "modify"]}}, "label": _STR, "expires_in": _INT}, required=["scopes"]),
    "NewToken": _object({"token": _ref("TokenInfo"), "secret": _STR, "docker_login": _STR}),
    "Account": _object(_ACCOUNT),
    "Accounts": _object({"accounts": {"type": "array", "items": _ref("Account")}}),
    "NewAccount": _object({"name": _STR, "certified": _BOOL, "admin": _BOOL, "password": _STR}, required=["name"]),
    "AccountChange": _object({"certified": _BOOL, "admin": _BOOL, "disabled": _BOOL, "password": _STR},
                             required=[]),
}

_QUERY = {
    "n": ({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "items per page"),
    "last": (_STR, "the `next` marker of the previous page"),
    "sort": ({"type": "string", "enum": ["name", "time"], "default": "name"},
             "by name (ascending) or by push time (newest first)"),
    "filter": (_STR, "keep the names containing this text (case-insensitive)"),
    "sort_synapse": ({"type": "string", "enum": ["CREATED_ON", "TAG"], "default": "CREATED_ON"}, "sort order"),
    "ascending": ({"type": "boolean", "default": False}, "oldest (or A) first"),
    "limit": ({"type": "integer", "minimum": 1, "maximum": 1000, "default": 10}, "items"),
    "offset": ({"type": "integer", "minimum": 0, "default": 0}, "items to skip"),
}
_ERRORS = {"400": "INVALID", "401": "UNAUTHORIZED", "403": "DENIED", "404": "NOT_FOUND", "409": "CONFLICT",
           "429": "TOO_MANY_REQUESTS", "503": "UNAVAILABLE"}


def openapi_path(path: str) -> str:
    """Starlette's `{name:path}` as OpenAPI's `{name}`."""
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", path)


def document(endpoints: Iterable[Endpoint], prefix: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in endpoints:
        path = openapi_path(prefix + e.path)
        parameters = [{"name": name, "in": "path", "required": True, "schema": _STR}
                      for name in re.findall(r"\{(\w+)\}", path)]
        parameters += [{"name": q.partition("_")[0], "in": "query", "required": False, "schema": _QUERY[q][0],
                        "description": _QUERY[q][1]} for q in e.query]
        answer: dict[str, Any] = {"description": e.summary}
        if e.response is not None:
            answer["content"] = {"application/json": {"schema": _ref(e.response)}}
        responses: dict[str, Any] = {str(e.status): answer}
        responses.update({status: {"description": code, "content": {"application/json": {"schema": _ref("Error")}}}
                          for status, code in _ERRORS.items()})
        operation: dict[str, Any] = {"summary": e.summary, "operationId": e.handler.__name__,
                                     "parameters": parameters, "responses": responses}
        if e.body is not None:
            operation["requestBody"] = {"required": True,
                                        "content": {"application/json": {"schema": _ref(e.body)}}}
        paths.setdefault(path, {})[e.method.lower()] = operation
    paths[prefix + "/openapi.json"] = {"get": {"summary": "This document", "operationId": "openapi",
                                               "responses": {"200": {"description": "OpenAPI 3.1"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Berth portal API", "version": "1",
                 "description": "Projects, repositories, tags and tokens, filtered by the registry's policy."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "token": {"type": "http", "scheme": "bearer", "description": "a personal access token (berth_...)"},
            "basic": {"type": "http", "scheme": "basic", "description": "any user name, the token as password"}}},
        "security": [{}, {"token": []}, {"basic": []}],
    }
