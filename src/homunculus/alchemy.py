"""The Alchemy-style API: ``from homunculus.alchemy import DataLoader, Feature, Model, ...``."""

from homunculus.frontend.alchemy import (
    DataLoader,
    Feature,
    Model,
    Platform,
    Platforms,
    Schedule,
    Verdict,
    generate,
)

__all__ = ["DataLoader", "Feature", "Model", "Platform", "Platforms", "Schedule", "Verdict",
           "generate"]
