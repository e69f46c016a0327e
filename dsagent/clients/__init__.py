"""Clients of a running deployment: LangChain chat models (``chat``), the reasoning they carry
(``reasoning``), the recipes built on them (``recipes``), copy-paste snippets (``snippets``) and
the demos' two arithmetic tools (``demo_tools``). Imports only the layers below (``deploy`` and under)."""
