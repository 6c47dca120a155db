"""`serve/`: the ASGI server that answers Incus from a published store.

It reads the store only through `talos_pipeline.core.stores.Store` and never imports Dagster.
"""

from __future__ import annotations

from .app import create_app
from .server import serve_forever, start_in_thread
from .tls import generate_self_signed, server_ssl_context

__all__ = ["create_app", "generate_self_signed", "serve_forever", "server_ssl_context", "start_in_thread"]
