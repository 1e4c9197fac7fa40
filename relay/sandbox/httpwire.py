"""Compatibility names for sandbox code: the HTTP model now lives in `relay.httpserver` (h11)."""

from __future__ import annotations

from relay.httpserver import BadRequest, HttpRequest, HttpResponse, json_response

__all__ = ["BadRequest", "HttpRequest", "HttpResponse", "json_response"]
