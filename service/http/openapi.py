"""The OpenAPI 3.1 document of the public API; tests check the running service against it."""

from typing import Any

from service import __version__

_PROBLEM = {"$ref": "#/components/responses/Problem"}
_REQUEST_ID = {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}}

OPENAPI_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "hello-birthday",
        "version": __version__,
        "description": "Stores dates of birth and answers how many days until a user's birthday.",
    },
    "paths": {
        "/hello/{username}": {
            "parameters": [
                {
                    "name": "username",
                    "in": "path",
                    "required": True,
                    "description": "1 to 64 ASCII letters; case-sensitive.",
                    "schema": {"type": "string", "pattern": "^[A-Za-z]{1,64}$"},
                }
            ],
            "put": {
                "operationId": "putBirthday",
                "summary": "Save or update the user's date of birth.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Birthday"}}},
                },
                "responses": {
                    "204": {"description": "Saved and committed.", "headers": _REQUEST_ID},
                    "400": _PROBLEM,
                    "413": _PROBLEM,
                    "415": _PROBLEM,
                    "503": _PROBLEM,
                    "507": {
                        "description": "The server's disk is full: the write was not stored; retry later.",
                        "headers": {
                            **_REQUEST_ID,
                            "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."},
                        },
                        "content": {
                            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                        },
                    },
                },
            },
            "get": {
                "operationId": "getGreeting",
                "summary": "Days until the user's birthday, or a happy birthday.",
                "responses": {
                    "200": {
                        "description": "The greeting.",
                        "headers": _REQUEST_ID,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Greeting"}}
                        },
                    },
                    "400": _PROBLEM,
                    "404": _PROBLEM,
                    # PostgreSQL profile: the database is down or restarting (Retry-After).
                    "503": _PROBLEM,
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "liveness",
                "summary": "The process serves requests.",
                "responses": {
                    "200": {
                        "description": "Alive.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
                    }
                },
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "summary": "The database answers and its schema is current.",
                "responses": {
                    "200": {
                        "description": "Ready.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
                    },
                    "503": _PROBLEM,
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Birthday": {
                "type": "object",
                "required": ["dateOfBirth"],
                "properties": {
                    "dateOfBirth": {
                        "type": "string",
                        "format": "date",
                        "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
                        "description": "YYYY-MM-DD, a real calendar date strictly before today.",
                        "examples": ["1990-07-14"],
                    }
                },
            },
            "Greeting": {
                "type": "object",
                "required": ["message"],
                "properties": {"message": {"type": "string"}},
                "additionalProperties": False,
            },
            "Status": {
                "type": "object",
                "required": ["status"],
                "properties": {
                    "status": {"type": "string"},
                    # On /readyz while the disk is full: reads are served, writes refused (507).
                    "writes": {"type": "string", "enum": ["refused"]},
                    "reason": {"type": "string"},
                },
            },
            "Problem": {
                "type": "object",
                "required": ["type", "title", "status", "detail"],
                "properties": {
                    "type": {"type": "string"},
                    "title": {"type": "string"},
                    "status": {"type": "integer"},
                    "detail": {"type": "string"},
                    "requestId": {"type": "string"},
                },
            },
        },
        "headers": {
            "RequestId": {
                "description": "The request id: Fly-Request-Id or X-Request-Id if sent, else new.",
                "schema": {"type": "string"},
            }
        },
        "responses": {
            "Problem": {
                "description": "RFC 9457 problem details.",
                "headers": _REQUEST_ID,
                "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
        },
    },
}
