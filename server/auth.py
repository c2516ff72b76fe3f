"""Who is talking: HS256 tokens whose `sub` is the user id.

Token mode (CHAT_AUTH_SECRET set): a valid token is required. Open mode: a connection without a
token becomes a new user, and the server mints a token for it with a secret kept in the database,
so the identity survives restarts. In both modes a token that is present must be valid.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from server.protocol.frames import storable

ALGORITHM = "HS256"
LEEWAY_S = 30
OPEN_MODE_SECRET_NAME = "open_mode_jwt_secret"
OPEN_MODE_TOKEN_TTL_S = 30 * 86400  # CHAT_OPEN_MODE_TOKEN_TTL_S's default


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    expires_at: float | None = None  # the token's exp, if it has one
    minted_token: str | None = None  # open mode: a fresh token for this connection's `ready`

    def expired(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return self.expires_at is not None and now > self.expires_at + LEEWAY_S


class AuthError(Exception):
    pass


class Authenticator:
    def __init__(self, secret: str, token_mode: bool, open_mode_ttl_s: float = OPEN_MODE_TOKEN_TTL_S):
        self._secret = secret
        self.token_mode = token_mode
        # Open-mode tokens expire (a leaked one is not good forever); each `ready` hands out a
        # fresh one, so a user who comes back within the TTL never notices.
        self.open_mode_ttl_s = open_mode_ttl_s

    @staticmethod
    def new_secret() -> str:
        return secrets.token_urlsafe(48)

    def verify(self, token: str) -> Identity:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], leeway=LEEWAY_S,
                                options={"require": ["sub"]})
        except jwt.PyJWTError as e:
            raise AuthError(refusal_reason(e)) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise AuthError("invalid token: sub must be a non-empty string")
        if not storable(sub):
            raise AuthError("invalid token: sub holds a NUL character or a lone surrogate")
        exp = claims.get("exp")
        return Identity(sub, float(exp) if isinstance(exp, int | float) else None)

    def mint(self, user_id: str, ttl_s: float | None = None) -> str:
        claims: dict[str, object] = {"sub": user_id, "iat": int(time.time())}
        if ttl_s is not None:
            claims["exp"] = int(time.time() + ttl_s)
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def identify(self, token: str | None) -> Identity:
        """The identity for a connection presenting `token` (None: it presented none)."""
        if token:
            identity = self.verify(token)
            return identity if self.token_mode else self._fresh(identity.user_id)
        if self.token_mode:
            raise AuthError("a token is required")
        return self._fresh("u-" + uuid.uuid4().hex)

    def _fresh(self, user_id: str) -> Identity:
        """Open mode: the identity with a newly minted token, whose expiry is the connection's."""
        return Identity(user_id, time.time() + self.open_mode_ttl_s, self.mint(user_id, self.open_mode_ttl_s))


def refusal_reason(e: jwt.PyJWTError) -> str:
    """Short, and safe to send back and to log: it names what is wrong, never the token."""
    if isinstance(e, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(e, jwt.InvalidSignatureError):
        return "invalid token: signature"
    if isinstance(e, jwt.InvalidAlgorithmError):
        return "invalid token: algorithm (HS256 only)"
    if isinstance(e, jwt.MissingRequiredClaimError):
        return f"invalid token: no {e.claim} claim"
    if isinstance(e, jwt.ImmatureSignatureError):
        return "invalid token: not valid yet (iat or nbf in the future)"
    if isinstance(e, jwt.DecodeError):
        return "invalid token: not a JWT"
    return "invalid token: " + type(e).__name__.removesuffix("Error").lower()


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None
