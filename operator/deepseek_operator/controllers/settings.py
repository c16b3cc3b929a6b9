"""Operator-wide kopf settings: our own annotation prefix and finalizer, no Events mirrored from logs."""

from __future__ import annotations

from typing import Any

import kopf

from deepseek_operator import naming


def configure(settings: kopf.OperatorSettings) -> None:
    # Our own prefix from day one: changing storages later would make every object look new.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.ANNOTATION_PREFIX,
        key="last-handled-configuration",
        # GitOps tools add tracking labels/annotations: they must not look like spec changes.
        ignored_fields=["metadata.labels", "metadata.annotations"],
    )
    settings.persistence.finalizer = naming.FINALIZER
    settings.posting.loggers = False  # Events only for real transitions, posted explicitly
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 310
    settings.networking.error_backoffs = [1, 2, 5, 10]
    settings.execution.max_workers = 8


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    configure(settings)
