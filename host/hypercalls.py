"""The host's hypercall handlers, one per SMCCC function ID (protocol/hypercalls.py, SPEC §5).

`Hypercalls.call(vcpu, func_id, args)` returns the return registers x0..x3; an unknown function
ID returns NOT_SUPPORTED, as SMCCC requires (Arm DEN0028 §5.2). The handlers act on the
session's `AsyncPf`; powering off (PSCI SYSTEM_OFF) is answered here and acted on by the daemon.
"""
from __future__ import annotations

import logging
from typing import Callable

from host.apf import AsyncPf
from protocol.hypercalls import (APF_FLAGS_MASK, APF_RESERVED_FLAGS, APF_VERSION, PPI_MAX, PPI_MIN,
                                 SMCCC_VERSION_1_1, ApfFlags, FuncId, SmcccRet)
from shared.layout import block_offset

log = logging.getLogger("apf.host")

Handler = Callable[[int, tuple[int, ...]], tuple[int, ...]]


class Hypercalls:
    """The handlers over one session's `apf`; `control_ipa` is the guest IPA of the control window
    and `max_outstanding` what APF_FEATURES reports; `dilation` takes EMU_DILATION's x1 (D x 1000)
    and returns (SMCCC return, factor in force x 1000), None on a host without --dilation
    (EMU_DILATION is then NOT_SUPPORTED)."""

    def __init__(self, apf: AsyncPf, control_ipa: int, max_outstanding: int,
                 dilation: Callable[[int], tuple[int, int]] | None = None):
        self.apf = apf
        self.dilation = dilation      # EMU_DILATION: x1 -> (SMCCC return, factor in force x 1000)
        self.control_ipa = control_ipa
        self.max_outstanding = max_outstanding
        self.table: dict[int, Handler] = {
            FuncId.SMCCC_VERSION: lambda vcpu, args: (SMCCC_VERSION_1_1,),
            FuncId.APF_FEATURES: self.features, FuncId.APF_ENABLE: self.enable,
            FuncId.APF_DISABLE: self.disable, FuncId.APF_ACK: self.ack,
            FuncId.GIC_PPI_ENABLE: self.ppi_enable, FuncId.GIC_PPI_DISABLE: self.ppi_disable,
            FuncId.PSCI_SYSTEM_OFF: lambda vcpu, args: (SmcccRet.SUCCESS,),
            FuncId.EMU_DILATION: self.set_dilation,
        }

    def call(self, vcpu: int, func_id: int, args: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Run the hypercall; return x0..x3 (missing registers are 0)."""
        handler = self.table.get(func_id)
        ret = handler(vcpu, args) if handler else (SmcccRet.NOT_SUPPORTED,)
        return tuple(int(r) for r in ret) + (0,) * (4 - len(ret))  # type: ignore[return-value]

    def features(self, vcpu: int, args: tuple[int, ...]) -> tuple[int, ...]:
        flags = ApfFlags.ENABLED | ApfFlags.SEND_ALWAYS | ApfFlags.DELIVERY_AS_INT
        return (SmcccRet.SUCCESS, APF_VERSION, self.max_outstanding, int(flags))

    def enable(self, vcpu: int, args: tuple[int, ...]) -> tuple[int, ...]:
        if len(args) < 2:
            return (SmcccRet.INVALID_PARAMETER,)
        word, irq = args[0], args[1]
        flags, ipa = ApfFlags(word & APF_FLAGS_MASK), word & ~APF_FLAGS_MASK
        if not flags & ApfFlags.ENABLED:
            return self.disable(vcpu, ())
        own_block = self.control_ipa + block_offset(vcpu)
        bad = (word & APF_RESERVED_FLAGS or not flags & ApfFlags.DELIVERY_AS_INT
               or ipa != own_block or not PPI_MIN <= irq <= PPI_MAX or any(args[2:]))
        if bad:
            return (SmcccRet.INVALID_PARAMETER,)
        if not self.apf.enable(vcpu, flags, irq):
            return (SmcccRet.NOT_REQUIRED,)     # enabled already: to change flags, disable first
        log.info("vCPU %d enabled APF (flags %s, PPI %d)", vcpu, flags, irq)
        return (SmcccRet.SUCCESS,)

    def disable(self, vcpu: int, args: tuple[int, ...]) -> tuple[int, ...]:
        return (SmcccRet.SUCCESS if self.apf.disable(vcpu) else SmcccRet.NOT_REQUIRED,)

    def ppi_enable(self, vcpu: int, args: tuple[int, ...]) -> tuple[int, ...]:
        return self._set_ppi(vcpu, args, True)

    def ppi_disable(self, vcpu: int, args: tuple[int, ...]) -> tuple[int, ...]:
        return self._set_ppi(vcpu, args, False)

    def _set_ppi(self, vcpu: int, args: tuple[int, ...], enabled: bool) -> tuple[int, ...]:
        if len(args) != 1 or not self.apf.set_ppi(vcpu, args[0], enabled):
            return (SmcccRet.INVALID_PARAMETER,)    # not the page-ready PPI: unknown to this model
        return (SmcccRet.SUCCESS,)

    def set_dilation(self, vcpu: int, args: tuple[int, ...]) -> tuple[int, ...]:
        if self.dilation is None:
            return (SmcccRet.NOT_SUPPORTED,)
        if len(args) != 1:
            return (SmcccRet.INVALID_PARAMETER,)
        return self.dilation(args[0])

    def ack(self, vcpu: int, args: tuple[int, ...]) -> tuple[int, ...]:
        self.apf.ack(vcpu)
        return (SmcccRet.SUCCESS,)
