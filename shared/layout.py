"""Layout of the control file: a 64-byte header, then one fixed, padded 64-byte block per vCPU.

Header (offset 0):
| off | size | field       | value                                  |
|-----|------|-------------|----------------------------------------|
| 0   | 4    | magic       | b"APFH"                                |
| 4   | 2    | version     | LAYOUT_VERSION                         |
| 6   | 2    | block_size  | 64                                     |
| 8   | 4    | page_size   | 4096                                   |
| 12  | 4    | nr_vcpus    |                                        |
| 16  | 8    | guest_pages |                                        |
| 24  | 40   | reserved    | zero                                   |

Per-vCPU block (offset 64 * (1 + vcpu)), the emulated `struct kvm_vcpu_pv_apf_data`:
| off | size | field       | who writes                 | who clears / when                          |
|-----|------|-------------|----------------------------|--------------------------------------------|
| 0   | 4    | magic       | host, at create (b"APFV")  | never                                      |
| 4   | 2    | version     | host, at create            | never                                      |
| 6   | 2    | vcpu        | host, at create            | never                                      |
| 8   | 4    | reason      | host, before INJECT_EXC    | guest, after reading it in the handler     |
| 12  | 4    | np_token    | host, with `reason`        | guest, with `reason`                       |
| 16  | 4    | ready_token | host, only when it is 0    | guest, before APF_ACK (0 = slot free)      |
| 20  | 4    | enabled     | host, on APF_ENABLE/DISABLE| host (mirror of the ENABLE flags)          |
| 24  | 40   | reserved    | nobody                     | must stay zero                             |
"""
import struct
from enum import IntEnum

from protocol.messages import PAGE_SIZE

LAYOUT_VERSION = 1
BLOCK_SIZE = 64
HEADER_MAGIC = b"APFH"
BLOCK_MAGIC = b"APFV"

HEADER = struct.Struct("<4sHHIIQ40s")
BLOCK = struct.Struct("<4sHHIIII40s")
assert HEADER.size == BLOCK_SIZE and BLOCK.size == BLOCK_SIZE


class Reason(IntEnum):
    """Values of the control block's `reason` field."""
    NONE = 0
    PAGE_NOT_PRESENT = 1


# Byte offsets of the mutable fields inside a block, for single-field u32 access.
FIELD_OFFSET = {"reason": 8, "np_token": 12, "ready_token": 16, "enabled": 20}
RESERVED_OFFSET, RESERVED_SIZE = 24, 40

WAKE_ALL_TOKEN = 0xFFFFFFFF  # `~0`: every sleeper of that vCPU wakes

# The stage-2 file (shared/files.py) has its own version: 2 since entries carry permissions
# (version 1 had a 0/1 `valid` byte).
STAGE2_VERSION = 2


class Perm(IntEnum):
    """A stage-2 entry (one byte per guest page, written by the host only): what the guest's MMU
    lets an access do. An access the entry does not allow traps: a read of NONE, a write of
    anything but RW (a write to RO or ZERO is a permission fault, arm64's stage-2 permission
    fault or x86's write-protect EPT violation)."""
    NONE = 0    # not mapped: any access traps
    RO = 1      # the page's own frame, read-only (clean: write-protected to learn of the first write)
    RW = 2      # the page's own frame, read-write
    ZERO = 3    # the shared zero page, read-only: reads see zeros, the page's frame is not touched


def control_file_size(nr_vcpus: int) -> int:
    return BLOCK_SIZE * (1 + nr_vcpus)


def block_offset(vcpu: int) -> int:
    return BLOCK_SIZE * (1 + vcpu)


def pack_header(nr_vcpus: int, guest_pages: int) -> bytes:
    return HEADER.pack(HEADER_MAGIC, LAYOUT_VERSION, BLOCK_SIZE, PAGE_SIZE, nr_vcpus, guest_pages,
                       bytes(40))


def pack_block(vcpu: int) -> bytes:
    return BLOCK.pack(BLOCK_MAGIC, LAYOUT_VERSION, vcpu, Reason.NONE, 0, 0, 0, bytes(40))
