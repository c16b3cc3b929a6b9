"""Errors raised by the testbed."""


class TestbedError(RuntimeError):
    """The control plane could not be built, started or used; the message says which part and why."""

    __test__ = False  # not a pytest test class despite the name
