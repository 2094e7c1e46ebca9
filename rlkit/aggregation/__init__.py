"""Aggregations: how per-token losses [N, T] become one scalar, planned once per step over the global batch.

``plan(lengths, group_ids, max_len)`` returns per-sequence coefficients and one normaliser so that
loss = Σ_i coef_i Σ_t token_weights·ℓ / normalizer, independent of micro-batch size and world size.
Importing this package registers the built-in modes in ``rlkit.registry.AGGREGATIONS``.
"""

from rlkit.aggregation import (  # noqa: F401  (each module registers its mode)
    delta_l,
    seq_mean_token_mean,
    seq_mean_token_sum,
    seq_mean_token_sum_norm,
    token_mean,
)
from rlkit.aggregation.delta_l import DeltaL
from rlkit.aggregation.seq_mean_token_mean import SeqMeanTokenMean
from rlkit.aggregation.seq_mean_token_sum import SeqMeanTokenSum
from rlkit.aggregation.seq_mean_token_sum_norm import SeqMeanTokenSumNorm
from rlkit.aggregation.token_mean import TokenMean
from rlkit.plugin_api import Aggregation, AggregationPlan

__all__ = ["Aggregation", "AggregationPlan", "DeltaL", "SeqMeanTokenMean", "SeqMeanTokenSum", "SeqMeanTokenSumNorm",
           "TokenMean"]
