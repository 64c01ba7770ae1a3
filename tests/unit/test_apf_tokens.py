"""host/apf.py token allocation across the 20-bit counter's wrap (SPEC §8): a token still
outstanding from before the wrap is never issued again; its page-ready still resolves it."""
from __future__ import annotations

import os

from host.apf import TOKEN_COUNTER_MASK, TOKEN_VCPU_BITS, AsyncPf
from protocol.hypercalls import DEFAULT_PAGE_READY_PPI, ApfFlags
from shared.files import ControlFile
from shared.layout import WAKE_ALL_TOKEN

VCPUS, PAGES = 2, 64


def token(counter: int, vcpu: int) -> int:
    return (counter << TOKEN_VCPU_BITS) | vcpu


def test_wrap_skips_a_token_still_outstanding(shm_dir):
    """vCPU 1 keeps counter-1's token outstanding while its counter runs to the top and wraps:
    the next tokens are the top one, counter 0's, then counter 2's (counter 1's is skipped, as it
    is outstanding); when that old page comes in, its own token is queued, once, and delivered."""
    control = ControlFile.create(os.path.join(shm_dir, "control"), VCPUS, PAGES)
    injected: list[int] = []
    try:
        apf = AsyncPf(control, VCPUS, max_outstanding=64, inject_page_ready=injected.append)
        apf.enable(1, ApfFlags.ENABLED | ApfFlags.DELIVERY_AS_INT, DEFAULT_PAGE_READY_PPI)
        assert control.take(1, "ready_token") == WAKE_ALL_TOKEN
        apf.ack(1)
        old = apf.not_present(1, gfn=5)
        assert old == token(1, 1)
        apf.vcpus[1].counter = TOKEN_COUNTER_MASK - 1
        issued = [apf.not_present(1, gfn) for gfn in (10, 11, 12)]
        assert issued == [token(TOKEN_COUNTER_MASK, 1), token(0, 1), token(2, 1)]
        assert len(set(issued + [old])) == 4
        assert apf.page_in(1, 5, old)
        assert control.read(1, "ready_token") == old
        assert apf.outstanding()[1] == 3 and injected == [1, 1]   # the wake-all, then the old token
    finally:
        control.close()
