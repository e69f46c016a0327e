"""The MCP face: the deployment's recipes and status as MCP tools for any agent.

``server`` (tools, resources, transports), ``backend`` (what the tools call), ``launcher``
(``--up``: the background start and the stop of what it started), ``messages`` (what an agent
is told), ``auth`` (the HTTP bearer token). Imports only the layers below (``clients`` and under).
"""
