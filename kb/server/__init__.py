"""`kb serve`: app and uvicorn runner (app.py), routes, request schemas, SSE streaming, security, errors."""

from kb.server.app import create_app, serve

__all__ = ["create_app", "serve"]
