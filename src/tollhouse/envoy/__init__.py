"""The Envoy edge: the only package that speaks Envoy's protobufs and ext_authz formats.

The gRPC Check (``authz``), the HTTP Check (``http_server``, ``http_codec``), one mapping of a
Decision for both (``answer``, ``codec``) and the access-log service (``als``, ``als_wire``).
"""
