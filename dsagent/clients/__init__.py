"""Clients of a running deployment: LangChain chat models (``chat``), the reasoning they carry
(``reasoning``), the recipes built on them (``recipes``) and copy-paste snippets (``snippets``).
Imports only the layers below (``deploy`` and under)."""
