"""apf-emu's one error vocabulary: the wire's error codes, and every exception a user can act on.

Every class below derives from `ApfError`, which means "a condition the user can act on": bad
input, a refused configuration, an environment that cannot run what was asked, or a peer that
misbehaved or went away. The command line prints such an error on one line and exits 2; any
other exception is a bug in apf-emu and shows as one (with its traceback).

Neighbours, told apart (as trio's `ClosedResourceError` / `BrokenResourceError`):
- `ConfigError` vs `RunDirError` vs `AioUnavailable`: what the user asked cannot work (an
  option value), the place the daemons share cannot be used (a directory), or this machine
  cannot do it (a kernel feature) although the request itself was fine.
- `ProtocolError` vs `PeerLostError` vs `GuestError`: the other side sent something that breaks
  the protocol (we reject it), the other side stopped answering within its bound (it is gone or
  stuck), or the host answered correctly but refused what the guest needs to go on.
- `LayoutError` vs `SwapIOError`: a shared file is not what its header claims (the other side
  wrote something else), or the swap device failed under us (the OSError is the cause).

Exceptions used only for control flow inside one module (a vCPU told to stop, a signal turned
into an exception) stay private to that module and never reach the user.
"""
from enum import IntEnum


# `apf host --once` exits with this status when its one session ended with the guest taken for
# lost (silent past the liveness expiry, its process gone, a TLBI never acknowledged): `apf run`
# then stops the guest at once instead of waiting for it.
EXIT_GUEST_DROPPED = 3


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


class ApfError(Exception):
    """A condition the user can act on; the message says what happened and, where it can, what to do."""


# -- what the user asked -------------------------------------------------------------------------------------

class ConfigError(ApfError, ValueError):
    """An option value (from the command line, a config file or a daemon's own check) that cannot
    work; the message names the option. Raised before anything is created."""


class ChaosSpecError(ConfigError):
    """A malformed `--inject` fault-injection spec; the message shows the accepted forms."""


class ConfigFileError(ConfigError):
    """A config file that cannot be read or used; the message names the file and, if any, the key."""


class BenchError(ConfigError):
    """`apf bench` cannot run as asked; the message says what to change."""


class MemtraceError(ConfigError):
    """A memory trace that cannot be read (empty, no known format, truncated, a malformed line);
    the message names the file and, for text, the line."""


# -- where it runs -------------------------------------------------------------------------------------------

class RunDirError(ApfError):
    """The run directory cannot be used (owned by another user, writable by others, held by a live
    host, ...); the message says why and what to do."""


class AioUnavailable(ApfError):
    """This machine cannot run native AIO (architecture, kernel, or aio-max-nr); the reason says
    which. `--io-engine auto` falls back to the worker threads instead of raising it."""


class SwapIOError(ApfError):
    """The swap device cannot be opened or used; the OSError is the cause."""


class LayoutError(ApfError):
    """A shared file (RAM, stage 2, control) is missing, of the wrong size, or not what its header
    claims."""


# -- the other side ------------------------------------------------------------------------------------------

class ProtocolError(ApfError):
    """A frame that cannot be accepted. `code` says which rule it broke; `seq` is the offending
    frame's seq when it could be read, so that the ERROR reply correlates."""

    def __init__(self, code: ErrorCode, reason: str, seq: int = 0):
        super().__init__(reason)
        self.code = ErrorCode(code)
        self.reason = reason
        self.seq = seq

    def __str__(self) -> str:
        return f"{self.code.name.lower()}: {self.reason}"


class PeerLostError(ApfError):
    """The other side stopped answering within its bound (heartbeat expiry or reply timeout)."""


class GuestError(ApfError):
    """The guest cannot go on: the host refused it something it needs (attach, APF_ENABLE, a
    hypercall), told it of a host bug, or it found a task stuck; the message says which."""


# -- the front end -------------------------------------------------------------------------------------------

class RunError(ApfError):
    """`apf run` could not complete; the message says which part failed."""


class StatsError(ApfError):
    """`apf stats` cannot get the host's counters; the message says why and what to check."""


class RecordError(ApfError):
    """`apf trace record` cannot record the command: no valgrind, or the command failed."""
