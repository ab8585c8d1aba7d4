"""A Plan: what both frontends produce and the compiler consumes."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from homunculus.data.dataset import Dataset
from homunculus.errors import SpecError
from homunculus.frontend.spec import AdaptSpec, ModelSpec, PlatformSpec, SearchSpec

_PARENT = re.compile(r"(\.[^.\[]+|\[\d+\])$")


@dataclass
class Plan:
    name: str
    model: ModelSpec
    platform: PlatformSpec
    search: SearchSpec
    load_data: Callable[[], Dataset]
    source: str
    # spec field path (dotted) -> (file, line), for errors found after parsing
    origins: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    n_models: int = 1
    select_features: bool = False  # traffic specs may put the feature set into the search
    inputs: list[Path] = field(default_factory=list)  # files it reads: OUT may not hold them
    feature_paths: list[str] = field(default_factory=list)  # spec field of each data feature
    adapt: AdaptSpec | None = None  # telemetry and atomic installs (homunculus adapt)

    def feature_path(self, index: int) -> str:
        """The spec field that declared the data's feature ``index``."""
        if index < len(self.feature_paths):
            return self.feature_paths[index]
        return f"features[{index}]"

    def error(self, field_path: str, message: str) -> SpecError:
        """A SpecError located at ``field_path`` (or its nearest located ancestor)."""
        probe = field_path
        while probe and probe not in self.origins:
            parent = _PARENT.sub("", probe)
            probe = "" if parent == probe else parent  # a top-level field: no located ancestor
        file, line = self.origins.get(probe, (self.source, None))
        return SpecError(message, file=file, field=field_path, line=line)
