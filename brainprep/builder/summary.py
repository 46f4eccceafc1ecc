"""What a build did, as a small frozen record and one closing line."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class BuildSummary:
    """The outcome of :func:`brainprep.builder.build_patches`.

    Attributes:
        store: the store path.
        cases: cases in the store's case table.
        patches: patches written.
        skipped: cases without any patch (bad cases, no valid corner).
        bytes: compressed bytes of the image and label chunks.
        seconds: wall time of the whole build, this run only (a resumed build counts its own run).
        workers: worker count (or the cluster's thread count).
        resumed_cases: cases already done by an earlier, interrupted run.
    """

    store: str
    cases: int
    patches: int
    skipped: int
    bytes: int
    seconds: float
    workers: int
    resumed_cases: int = 0

    @property
    def patches_per_second(self) -> float:
        return self.patches / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patches_per_second"] = self.patches_per_second
        return data

    def line(self, kind: str = "patches") -> str:
        """``STORE: 20 cases, 380 patches, 1 skipped, 61.2 MB, 45.6 s, 8.3 patches/s`` (``kind="volumes"``:
        ``STORE: 20 cases, 19 volumes, 1 skipped, 150.3 MB, 30.1 s``)."""
        resumed = f" ({self.resumed_cases} done before resuming)" if self.resumed_cases else ""
        if kind == "volumes":
            return (
                f"{self.store}: {self.cases} cases{resumed}, {self.cases - self.skipped} volumes, "
                f"{self.skipped} skipped, {self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s"
            )
        return (
            f"{self.store}: {self.cases} cases{resumed}, {self.patches} patches, {self.skipped} skipped, "
            f"{self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s, {self.patches_per_second:.1f} patches/s"
        )
