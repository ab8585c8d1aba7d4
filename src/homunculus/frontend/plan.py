"""A Plan: what both frontends produce and the compiler consumes."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

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
    adapt: AdaptSpec | None = None  # telemetry and atomic installs (homunculus adapt)

    def error(self, field_path: str, message: str) -> SpecError:
        """A SpecError located at ``field_path`` (or its nearest located ancestor)."""
        probe = field_path
        while probe and probe not in self.origins:
            probe = _PARENT.sub("", probe)
        file, line = self.origins.get(probe, (self.source, None))
        return SpecError(message, file=file, field=field_path, line=line)
