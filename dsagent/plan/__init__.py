"""Planning, before anything is downloaded or launched (pure, apart from reading the GPUs).

``catalog`` (the models dsagent knows), ``arch`` (weight and KV bytes from a config),
``profiles`` (what each vLLM release spends besides them), ``budget`` (vLLM's start-up
accounting per GPU, and on CPU), ``estimate`` (the verb: the plan for the GPUs at hand and the
layout to pick). Imports only the layers below: ``errors``, ``settings``, ``files``, ``system``.
"""
