"""Prefect tasks: one thin task per step of the procedure, each calling one workspace method.

Retry and cache policies are declared on the decorators (see :mod:`tasks.policies`).
"""
