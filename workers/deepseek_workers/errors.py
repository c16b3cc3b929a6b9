"""Errors a worker command reports as a clear message and a distinct exit code (no torch imports here)."""

from __future__ import annotations

from deepseek_workers.runconfig import EXIT_BAD_ARTIFACT, EXIT_BAD_CONFIG, EXIT_BAD_DATA


class WorkerError(Exception):
    """An expected failure: the message is for the user and `exit_code` tells the operator what went wrong."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadConfigError(WorkerError):
    exit_code = EXIT_BAD_CONFIG


class BadDataError(WorkerError):
    """The dataset is missing, empty, lacks a field, or has a label the model does not know."""

    exit_code = EXIT_BAD_DATA


class BadArtifactError(WorkerError):
    """An input model or artifact is missing, truncated or fails hash verification."""

    exit_code = EXIT_BAD_ARTIFACT
