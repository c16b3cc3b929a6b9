"""Model architectures of our own. Importing this package registers them with transformers' Auto classes."""

from deepseek_workers.models.sparse import (
    SparseGatedConfig,
    SparseGatedForCausalLM,
    SparseGatedForSequenceClassification,
    SparseGatedModel,
    register,
)

register()

__all__ = [
    "SparseGatedConfig",
    "SparseGatedForCausalLM",
    "SparseGatedForSequenceClassification",
    "SparseGatedModel",
    "register",
]
