"""The machine: the one place that starts and ends processes (``procs``), reads GPUs (``gpus``)
and probes ports (``ports``). Imports only ``dsagent.errors`` and ``dsagent.settings``."""
