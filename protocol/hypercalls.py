"""Hypercall function IDs and return codes, SMCCC style (Arm DEN0028).

A function ID is `call type | convention | owner << 24 | function number`. The APF calls sit in
the vendor-specific hypervisor service range (owner 6) as fast SMC64 calls, as the later arm64
APF series proposed; SYSTEM_OFF is the PSCI call a guest makes to power off.

| name           | function ID  | args (x1..x4)                        | returns (x0..x3)                        |
|----------------|--------------|--------------------------------------|-----------------------------------------|
| SMCCC_VERSION  | 0x80000000   | -                                    | x0 = 0x10001 (v1.1)                     |
| APF_FEATURES   | 0xC6000010   | -                                    | x0 = 0, x1 = APF version, x2 = max      |
|                |              |                                      | outstanding per vCPU, x3 = flag mask    |
| APF_ENABLE     | 0xC6000011   | x1 = control-block IPA | flags,      | x0 = 0, INVALID_PARAMETER, or           |
|                |              | x2 = page-ready interrupt (PPI id)   | NOT_REQUIRED (enabled already)          |
| APF_DISABLE    | 0xC6000012   | -                                    | x0 = 0 or NOT_REQUIRED (disabled)       |
| APF_ACK        | 0xC6000013   | -                                    | x0 = 0 (slot consumed; next may follow) |
| GIC_PPI_ENABLE | 0xC6000014   | x1 = PPI id                          | x0 = 0 or INVALID_PARAMETER             |
| GIC_PPI_DISABLE| 0xC6000015   | x1 = PPI id                          | x0 = 0 or INVALID_PARAMETER             |

GIC_PPI_ENABLE / GIC_PPI_DISABLE stand for the guest's writes of bit `PPI id` to its GIC
redistributor's GICR_ISENABLER0 / GICR_ICENABLER0 (set-enable / clear-enable of an SGI or PPI,
Arm GIC v3 architecture specification §12.11), which a vGIC emulates in the hypervisor: the host
learns whether the guest can take the page-ready interrupt.
| PSCI_SYSTEM_OFF| 0x84000008   | -                                    | x0 = 0, then the session ends           |
| EMU_DILATION   | 0xC6000020   | x1 = dilation factor D x 1000        | x0 = 0, NOT_SUPPORTED (host has no      |
|                |              |                                      | --dilation) or INVALID_PARAMETER (D < 1 |
|                |              |                                      | or not the host's fixed factor);        |
|                |              |                                      | x1 = the factor in force x 1000         |

EMU_DILATION is the emulator's own (no real hypervisor has it): the guest, having measured the
emulator's exit cost, tells the host the time-dilation factor its modelled costs are scaled by
(shared/dilation.py).
"""
from enum import IntEnum, IntFlag


class FuncId(IntEnum):
    SMCCC_VERSION = 0x80000000
    PSCI_SYSTEM_OFF = 0x84000008
    APF_FEATURES = 0xC6000010
    APF_ENABLE = 0xC6000011
    APF_DISABLE = 0xC6000012
    APF_ACK = 0xC6000013
    GIC_PPI_ENABLE = 0xC6000014
    GIC_PPI_DISABLE = 0xC6000015
    EMU_DILATION = 0xC6000020


class SmcccRet(IntEnum):
    SUCCESS = 0
    NOT_SUPPORTED = -1
    NOT_REQUIRED = -2
    INVALID_PARAMETER = -3


class ApfFlags(IntFlag):
    """Low bits of APF_ENABLE's x1; the rest of x1 is the 64-byte aligned control-block IPA."""
    ENABLED = 1 << 0
    SEND_ALWAYS = 1 << 1      # deliver not-present even when the faulting context is the kernel
    DELIVERY_AS_INT = 1 << 3  # page-ready by interrupt; required, as on x86 since 2020


APF_FLAGS_MASK = 0x3F          # the bits below the 64-byte alignment
APF_RESERVED_FLAGS = APF_FLAGS_MASK & ~int(ApfFlags.ENABLED | ApfFlags.SEND_ALWAYS
                                           | ApfFlags.DELIVERY_AS_INT)
APF_VERSION = 1
SMCCC_VERSION_1_1 = 0x10001
PPI_MIN, PPI_MAX = 16, 31      # private per-vCPU interrupts, where page-ready lives
DEFAULT_PAGE_READY_PPI = 30
