"""The laptop side: ``bridged daemon``, one long-running process per user.

- :mod:`.app`: the daemon: bridges by name, the control API, signals, staged shutdown;
- :mod:`.bridge`: one relay connection kept alive, with its forwards and intercepts;
- :mod:`.control_channel`: the daemon's end of the control subsystem.
"""
