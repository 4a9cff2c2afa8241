"""Prefect tasks: one pipeline step each (a DVC stage, a DVC remote call, a registry call, an artifact).

Retries live here, on the steps that fail transiently; the library under src/tuneline never imports prefect.
"""
