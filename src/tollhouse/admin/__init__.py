"""The admin API (aiohttp sub-application mounted at ``/admin``)."""

from tollhouse.admin.api import OPENAPI_PATH, admin_routes, build_admin_app, read_token_sha256

__all__ = ["OPENAPI_PATH", "admin_routes", "build_admin_app", "read_token_sha256"]
