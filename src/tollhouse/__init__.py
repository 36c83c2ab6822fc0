"""tollhouse: ext_authz + access-log metering + billing for any HTTP API behind Envoy.

The public, stable surface is the command line (``tollhouse serve|check-config|bill|usage|store|
customers|keys|demo``) and the config file format (:mod:`tollhouse.config`).
"""

from tollhouse.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "__version__", "load_config"]
__version__ = "0.1.0"
