"""The apf-emu wire protocol: message kinds, hypercall IDs and the one validating decoder.

`protocol/SPEC.md` is the normative description; this package follows it.
"""
from protocol.errors import ErrorCode, PeerLostError, ProtocolError
from protocol.messages import *  # noqa: F401,F403 - the message classes are the package's API
from protocol.messages import PROTOCOL_VERSION, Kind, Limits, Message
from protocol.codec import decode, encode

__all__ = ["PROTOCOL_VERSION", "ErrorCode", "Kind", "Limits", "Message", "PeerLostError",
           "ProtocolError", "decode", "encode"]
