"""Model families: each declares its search space, trains, and quantises to the IR."""

from homunculus.models.base import FAMILIES, Family, TrainedModel, get_family

__all__ = ["FAMILIES", "Family", "TrainedModel", "get_family"]
