"""Error codes and close codes of chat.v1."""

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    INVALID = "invalid"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    INVALID_DATA = 1007  # invalid UTF-8
    POLICY = 1008  # auth or origin refused, token expired, flooding
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN_LATER = 1013  # too many sockets for this user
