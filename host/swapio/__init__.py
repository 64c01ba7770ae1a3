"""The host's swap: the swap file and the engines that do its I/O.

    device.py   the swap file (SwapDevice): one page-sized slot per guest page
    engine.py   the IoEngine protocol the poll loop drives: jobs (IoOp, gfn) in, Completions out
    queues.py   what both engines share: job lanes, done queue and eventfd, bounded stop
    threads.py  the engine on worker threads (modelled latency, injected device faults)
    aio.py      the engine on Linux native AIO, driven from the poll loop (no threads)
    choice.py   which engine runs a configuration, and opening it
"""
