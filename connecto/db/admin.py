"""What `connecto db status` reports about a server."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient

SYSTEM_DATABASES = {"admin", "local", "config"}


def describe_server(client: MongoClient) -> dict[str, Any]:
    info = client.server_info()
    databases: dict[str, dict[str, int]] = {}
    for name in sorted(client.list_database_names()):
        if name in SYSTEM_DATABASES:
            continue
        db = client[name]
        databases[name] = {
            collection: db[collection].estimated_document_count()
            for collection in sorted(db.list_collection_names())
        }
    return {"version": info.get("version", "unknown"), "databases": databases}
