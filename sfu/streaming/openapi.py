"""The OpenAPI 3.1 document of the mountpoints' REST API, built from the model's field rules.

Request schemas are the very rules :func:`~sfu.streaming.model.parse_mountpoint` and
:func:`~sfu.streaming.model.parse_patch` apply; the admin view of a mountpoint is its create body
with every field present (what it returns reads back as a valid body) plus runtime fields.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from sfu.streaming.model import (
    MAX_ID,
    MEDIA_RULE,
    MOUNTPOINT_RULE,
    PATCH_RULE,
    ErrorCode,
)

__all__ = ["build_openapi"]

_REF: Final = "#/components/schemas/"
_ADMIN_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearerAuth": []}, {"adminKey": []}, {}]
_CHANGE_SECURITY: Final[list[dict[str, list[str]]]] = [
    {"bearerAuth": []},
    {"adminKey": []},
    {"mountpointSecret": []},
    {},
]

_ERRORS: Final = {
    400: "the body is not JSON (or empty, or has a duplicate field)",
    401: "a credential is needed: the admin key, or the mountpoint's secret",
    403: "the admin key or the secret sent is wrong",
    404: "no such mountpoint (or path)",
    409: "conflict: the id or a port is taken, no port left, the source could not start, "
    "or permanence is unavailable",
    413: "the body is larger than 64 KiB",
    415: "the body is multipart, not JSON",
    422: "the JSON does not describe a valid mountpoint or change: `problems` lists each field",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _schemas() -> dict[str, Any]:
    create = MOUNTPOINT_RULE.schema()
    media_admin = MEDIA_RULE.schema()
    media_admin["required"] = list(MEDIA_RULE.fields)

    admin = copy.deepcopy(create)
    admin["description"] = "a mountpoint as its owner sees it (admin key or secret)"
    admin["properties"]["id"] = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    admin["properties"]["media"]["items"] = _ref("MediaAdmin")
    admin["properties"].update(
        {
            "viewers": {"type": "integer", "minimum": 0, "description": "watchers attached"},
            "state": {"type": "string", "enum": ["stopped", "running", "failed"]},
            "error": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "description": "why the source failed to start (state 'failed')",
            },
            "stats": {"type": "object", "description": "the media source's counters"},
        }
    )
    admin["required"] = list(admin["properties"])

    public_fields = ("id", "name", "description", "metadata", "is_private", "enabled")
    media_public_fields = ("mid", "kind", "codec", "payload_type", "clock_rate", "fmtp")
    source_types = _source_types()
    media_public: dict[str, Any] = {
        "type": "object",
        "properties": {
            **{k: MEDIA_RULE.fields[k].schema() for k in media_public_fields},
            "source": {
                "type": "object",
                "properties": {"type": {"type": "string", "enum": source_types}},
                "required": ["type"],
                "additionalProperties": False,
            },
        },
        "additionalProperties": False,
    }
    media_public["required"] = list(media_public["properties"])
    public: dict[str, Any] = {
        "type": "object",
        "description": "a mountpoint as anyone sees it: no secret, pin or source details",
        "properties": {
            **{k: MOUNTPOINT_RULE.fields[k].schema() for k in public_fields},
            "pin_required": {"type": "boolean", "description": "watching needs the pin"},
            "viewers": {"type": "integer", "minimum": 0},
            "media": {"type": "array", "items": _ref("MediaPublic")},
        },
        "additionalProperties": False,
    }
    public["properties"]["id"] = admin["properties"]["id"]
    public["required"] = list(public["properties"])

    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
                    "reason": {"type": "string"},
                    "problems": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "field": {"type": "string"},
                                "reason": {"type": "string"},
                            },
                            "required": ["field", "reason"],
                        },
                    },
                },
                "required": ["code", "reason"],
            }
        },
        "required": ["error"],
    }
    return {
        "MountpointCreate": create,
        "MountpointEdit": PATCH_RULE.schema(),
        "MountpointAdmin": admin,
        "MountpointPublic": public,
        "MountpointView": {"anyOf": [_ref("MountpointAdmin"), _ref("MountpointPublic")]},
        "MediaAdmin": media_admin,
        "MediaPublic": media_public,
        "MountpointList": {
            "type": "object",
            "properties": {"mountpoints": {"type": "array", "items": _ref("MountpointView")}},
            "required": ["mountpoints"],
        },
        "Error": error,
    }


def _source_types() -> list[str]:
    return [t["properties"]["type"]["const"] for t in MEDIA_RULE.fields["source"].schema()["oneOf"]]


def _op(
    op_id: str,
    summary: str,
    ok: tuple[int, str, dict[str, Any]],
    errors: tuple[int, ...],
    *,
    security: list[dict[str, list[str]]] | None = None,
    body: str | None = None,
    description: str = "",
) -> dict[str, Any]:
    status, what, schema = ok
    responses: dict[str, Any] = {
        str(status): {"description": what, "content": _json_content(schema)}
    }
    for code in errors:
        responses[str(code)] = {
            "description": _ERRORS[code],
            "content": _json_content(_ref("Error")),
        }
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["mountpoints"],
        "responses": responses,
    }
    if description:
        op["description"] = description
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(_ref(body))}
    return op


def build_openapi() -> dict[str, Any]:
    """The whole document, as served at GET /api/openapi.json."""
    id_param = {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
        "description": "the mountpoint's id",
    }
    view = (200, "the mountpoint", _ref("MountpointView"))
    admin_view = (200, "the mountpoint, as its owner sees it", _ref("MountpointAdmin"))
    change_errors = (401, 403, 404, 409)
    paths: dict[str, dict[str, Any]] = {
        "/api/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "this document",
                "tags": ["meta"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": _json_content({"type": "object"}),
                    }
                },
            }
        },
        "/api/mountpoints": {
            "get": _op(
                "listMountpoints",
                "list the mountpoints (private ones only with the admin key)",
                (200, "the mountpoints, by id", _ref("MountpointList")),
                (401, 403),
                security=_ADMIN_SECURITY,
            ),
            "post": _op(
                "createMountpoint",
                "create a mountpoint",
                (201, "created; Location is its URL", _ref("MountpointAdmin")),
                (400, 401, 403, 409, 413, 415, 422),
                security=_ADMIN_SECURITY,
                body="MountpointCreate",
                description="Needs the admin key when the server has one. RTP ports given as 0 "
                "(or absent) are allocated from the configured range.",
            ),
        },
        "/api/mountpoints/{id}": {
            "parameters": [id_param],
            "get": _op(
                "getMountpoint",
                "a mountpoint: everything for its owner, the public view for others",
                view,
                (401, 403, 404),
                security=_CHANGE_SECURITY,
            ),
            "patch": _op(
                "editMountpoint",
                "change name, description, metadata, secret, pin, is_private or permanent",
                admin_view,
                (400, *change_errors, 413, 415, 422),
                security=_CHANGE_SECURITY,
                body="MountpointEdit",
            ),
            "delete": _op(
                "destroyMountpoint",
                "stop it, kick its watchers, forget it (also from the database)",
                (
                    200,
                    "destroyed",
                    {
                        "type": "object",
                        "properties": {"destroyed": {"type": "integer"}},
                        "required": ["destroyed"],
                    },
                ),
                change_errors,
                security=_CHANGE_SECURITY,
            ),
        },
    }
    for action, summary in (
        ("enable", "start its source (idempotent)"),
        ("disable", "stop its source; watchers stay attached (idempotent)"),
    ):
        paths[f"/api/mountpoints/{{id}}/{action}"] = {
            "parameters": [id_param],
            "post": _op(
                f"{action}Mountpoint", summary, admin_view, change_errors, security=_CHANGE_SECURITY
            ),
        }
    paths["/api/mountpoints/{id}/kick"] = {
        "parameters": [id_param],
        "post": _op(
            "kickWatchers",
            "detach every watcher of the mountpoint",
            (
                200,
                "how many watchers were kicked",
                {
                    "type": "object",
                    "properties": {"kicked": {"type": "integer", "minimum": 0}},
                    "required": ["kicked"],
                },
            ),
            change_errors,
            security=_CHANGE_SECURITY,
        ),
    }
    links = {
        op_id: {"operationId": op_id, "parameters": {"id": "$response.body#/id"}}
        for op_id in (
            "getMountpoint",
            "editMountpoint",
            "destroyMountpoint",
            "enableMountpoint",
            "disableMountpoint",
            "kickWatchers",
        )
    }
    paths["/api/mountpoints"]["post"]["responses"]["201"]["links"] = links
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sfu streaming mountpoints",
            "version": "1",
            "description": "Janus-like streaming mountpoints over REST; see docs/streaming.md.",
        },
        "tags": [{"name": "mountpoints"}, {"name": "meta"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the server's admin key",
                },
                "adminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key"},
                "mountpointSecret": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Mountpoint-Secret",
                },
            },
        },
    }
