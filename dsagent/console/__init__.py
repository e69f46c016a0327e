"""The web console: plan, deployments, GPUs and a chat, served on loopback behind the key (``app``)."""
