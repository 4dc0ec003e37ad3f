"""Tokens, keys and the checks every API applies."""

from glidewms.security.tokens import (
    Identity,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    generate_keypair,
)

__all__ = ["Identity", "TokenError", "TokenIssuer", "TokenVerifier", "generate_keypair"]
