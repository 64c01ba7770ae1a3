"""`apf bench`: the performance numbers, measured, with the limits they are measured against.

Three sections, written to `--out DIR`: results.json, results.md, PNG plots, plot_data.json (what
the plots are drawn from, so `--replot` can redraw them) and runs/ (the report of every run).

- **sweep**: fault mode {sync, async (, adaptive)} x modelled swap latency x runnable tasks, on one
  fixed seeded workload whose total number of accesses is the same at every task count. Each
  point is a real `apf run` (host and guest processes), repeated; the median wall time of the
  workload phase is the result and min/max its spread. One verified run per mode checks that no
  page was corrupted; traced runs give per-fault latencies (CDF) and a vCPU timeline.
- **presets**: the two scenarios the arm64 series published: a memory hog beside a compute-only
  task (`--compute-tasks`), and the hog alone.
- **micro**: the emulator's own costs against their limits (apf/microbench.py).
- **haltpoll** (`--only haltpoll`): halt polling's wall time and CPU with one task at short swap
  latencies (haltpoll.py).

The package, one concern a module (each imports only those listed before it):

    plan         points, the sweep, the presets, and the plan the options make
    runner       one point as a real, bounded `apf run`
    analysis     rows of medians, the ideal, speedups and the adaptive comparisons
    progress     the progress bar or lines on stderr
    markdown     results.md
    plots        the PNG plots and the trace reading they need
    output       the files written to --out
    orchestrate  running a plan's sections
    cli          the options and the `apf bench` command

The ideal wall time each point is measured against is explained in analysis.py.
"""
