"""Memory traces of real programs: text formats, import to the native memtrace, recording with valgrind, `apf trace`."""
