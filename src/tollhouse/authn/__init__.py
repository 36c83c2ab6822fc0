"""Authentication: who is calling (JWT via per-issuer JWKS, or API key)."""

from tollhouse.authn.api_keys import hash_api_key
from tollhouse.authn.authenticator import Authenticator
from tollhouse.authn.credentials import extract_credentials
from tollhouse.authn.jwks import JwksKeySet
from tollhouse.authn.outcome import AuthnFailure, Principal

__all__ = [
    "Authenticator",
    "AuthnFailure",
    "JwksKeySet",
    "Principal",
    "extract_credentials",
    "hash_api_key",
]
