"""Access tokens for rooms."""

from sfu.auth.tokens import AccessToken, Grant, TokenError, mint_token, verify_token

__all__ = ["AccessToken", "Grant", "TokenError", "mint_token", "verify_token"]
