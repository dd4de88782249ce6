"""The HTTP edge: OCI Distribution v1.1 over Starlette (app.py), bodies streamed into cas (streaming.py)."""

from .app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
