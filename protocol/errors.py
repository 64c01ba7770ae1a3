"""The small, exact set of protocol-level errors."""
from enum import IntEnum


class ErrorCode(IntEnum):
    """Codes carried by an ERROR reply (SPEC.md, "Errors")."""
    MALFORMED = 1       # not msgpack, not an array, wrong field count
    VERSION = 2         # the peer speaks another protocol version
    UNKNOWN_KIND = 3    # the kind number is not in the table
    BAD_FIELD = 4       # a field has the wrong type
    OUT_OF_RANGE = 5    # a field is outside its range (vCPU id, IPA, ...)
    NOT_ALLOWED = 6     # valid message, but not in the current session state
    BUSY = 7            # the host already serves a guest
    INTERNAL = 8        # the host failed; the message names the cause
    MEMORY_FAILURE = 9  # the page is poisoned (swap-in failed); the access cannot complete


class ProtocolError(Exception):
    """A frame that cannot be accepted. `code` says which rule it broke."""

    def __init__(self, code: ErrorCode, reason: str, seq: int = 0):
        super().__init__(reason)
        self.code = ErrorCode(code)
        self.reason = reason
        self.seq = seq  # the offending frame's seq when it could be read, so the reply correlates

    def __str__(self) -> str:
        return f"{self.code.name.lower()}: {self.reason}"


class PeerLostError(Exception):
    """The other side stopped answering within its bound (heartbeat or reply timeout)."""
