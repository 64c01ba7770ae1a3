"""The host's swap: the swap file and the engines that do its I/O.

    device.py   the swap file (SwapDevice): one page-sized slot per guest page
    engine.py   what an engine takes and reports: jobs (IoOp, gfn) and Completions
    threads.py  the engine on worker threads (modelled latency, injected device faults)
    aio.py      the engine on Linux native AIO, driven from the poll loop (no threads)
    choice.py   which engine runs a configuration, and opening it
"""
