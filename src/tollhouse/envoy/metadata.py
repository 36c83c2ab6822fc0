"""The ext_authz dynamic metadata, defined once: Envoy's namespace for it and tollhouse's keys.

Both transports write it, the access-log decoder reads it back:

- the gRPC codec (:mod:`tollhouse.envoy.codec`) puts an Allow's metadata in the CheckResponse's
  ``dynamic_metadata``, flat: Envoy files it under :data:`METADATA_NAMESPACE`;
- the HTTP codec (:mod:`tollhouse.envoy.http_codec`) sends each key as a response header
  (:func:`metadata_header`: ``usage_id`` -> ``x-tollhouse-usage-id``), which Envoy's
  ``dynamic_metadata_from_headers`` files under the same namespace, keyed by the header's name;
- the access-log decoder (:mod:`tollhouse.envoy.als`) finds the usage id under
  :data:`USAGE_ID_KEYS`, in that order.

The key names themselves are the Check's (:data:`tollhouse.decision.USAGE_ID_KEY`).
"""

from __future__ import annotations

from functools import lru_cache

from tollhouse.decision import USAGE_ID_KEY

__all__ = [
    "METADATA_HEADER_PREFIX",
    "METADATA_NAMESPACE",
    "USAGE_ID_HEADER",
    "USAGE_ID_KEY",
    "USAGE_ID_KEYS",
    "metadata_header",
]

METADATA_NAMESPACE = "envoy.filters.http.ext_authz"
METADATA_HEADER_PREFIX = "x-tollhouse-"


@lru_cache(maxsize=64)
def metadata_header(key: str) -> str:
    """The HTTP transport's header for a metadata key: ``usage_id`` -> ``x-tollhouse-usage-id``.

    Envoy's ``dynamic_metadata_from_headers`` files it under the ext_authz namespace by this name.
    """
    return METADATA_HEADER_PREFIX + key.replace("_", "-")


USAGE_ID_HEADER = metadata_header(USAGE_ID_KEY)
# Where the usage id sits in the ext_authz metadata, in order: gRPC CheckResponse metadata, then
# an HTTP authz response header turned into metadata (keyed by the header's name).
USAGE_ID_KEYS = (USAGE_ID_KEY, USAGE_ID_HEADER)
