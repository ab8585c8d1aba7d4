"""Lower a quantised MLP to a Pipeline: no tables compute the scores, the `QMLP` does.

The pipeline keeps the usual feature inputs, class field and verdict table (built exactly as
`homunculus.passes.lower` builds them); the encoders, lookups, score sum and arg-max are empty and
``Pipeline.mlp`` holds the network, whose arg-max a dense backend writes into ``notes["winner"]``.
"""

from __future__ import annotations

from homunculus.data.dataset import FeatureDecl
from homunculus.ir.dense import QMLP, check_ranges
from homunculus.ir.pipeline import Field, Pipeline, VerdictPlan, bits_for
from homunculus.passes.lower import build_verdict_table, feature_inputs


def lower_mlp(model: QMLP, features: tuple[FeatureDecl, ...], class_labels: tuple[str, ...],
              verdict: VerdictPlan, winner_to_class: tuple[int, ...] | None = None) -> Pipeline:
    """A Pipeline whose scores come from ``model`` and whose verdict table maps winners."""
    n_inputs = model.layers[0].shape[1]
    if n_inputs != len(features) or len(model.input_shift) != len(features):
        raise ValueError(f"the MLP reads {n_inputs} inputs but {len(features)} features "
                         "are declared")
    check_ranges(model)
    inputs = feature_inputs(features)
    n_winners = model.n_classes
    winner = Field("winner", bits_for(max(n_winners - 1, 1)))
    class_field = Field("class_id", bits_for(max(len(class_labels) - 1, 1)))
    verdict_table = build_verdict_table(winner, class_field, n_winners, winner_to_class, verdict)
    return Pipeline(
        features=inputs, encoders=(), lookups=(), score_sum=None, argmax=None,
        class_field=class_field, verdict=verdict_table, verdict_kind=verdict.kind,
        class_labels=class_labels, notes={"winner": winner}, mlp=model,
        default_port=verdict.default_port,
    )
