"""Deployments: a vLLM server's life on this machine.

``up`` (the verb: estimate, fetch, serve; and ``attach``), ``launch`` (the serve plan and its
executor), ``ready`` (start phases from the log and ``/health``), ``status`` (live state, the
lookup of the deployment meant, orphans), ``stop``, ``records`` (one JSON file per deployment)
and ``state`` (the ``State`` enum). Imports only the layers below: ``errors``, ``settings``,
``files``, ``system``, ``plan``, ``weights``.
"""
