"""The engine's tuning: backoffs, submission limits and chunk sizes, in one settings object.

The defaults suit a provider's 24-hour Batch API; a test, a rehearsal against the local
service or a notebook passes its own `Tuning` to `Pipeline(..., tuning=...)` instead of
changing module constants.
"""

from __future__ import annotations

from dataclasses import dataclass

# A try of a submission cut short (no answer, a 5xx: the batch may have been made) is taken
# up again after these waits, then doubling up to `max_requeue_backoff_seconds`.
DEFERRAL_BACKOFF_SECONDS = (5.0, 15.0, 60.0, 300.0)
# A shard the provider turned away for now (a create refused with 429, a batch failed on a
# limit) is submitted again after this, doubling with each submission up to the maximum:
# enqueued tokens free up only as other batches finish.
REQUEUE_BACKOFF_SECONDS = 60.0
MAX_REQUEUE_BACKOFF_SECONDS = 3600.0
# After this many submissions (about 27 hours of refusals, longer than any batch's 24-hour
# window) the shard will not fit (larger than the provider's limit, say): its rows are
# settled as failed instead.
MAX_SUBMISSIONS = 30
# Source rows joined and written per chunk when results are assembled.
CHUNK_ROWS = 16_384
# How long a process waits before looking again at a build another process is running.
BUILD_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class Tuning:
    """How long the engine waits, how often it tries, and how much it handles at once."""

    requeue_backoff_seconds: float = REQUEUE_BACKOFF_SECONDS
    max_requeue_backoff_seconds: float = MAX_REQUEUE_BACKOFF_SECONDS
    deferral_backoff_seconds: tuple[float, ...] = DEFERRAL_BACKOFF_SECONDS
    max_submissions: int = MAX_SUBMISSIONS
    chunk_rows: int = CHUNK_ROWS
    build_wait_seconds: float = BUILD_WAIT_SECONDS

    def __post_init__(self) -> None:
        if not self.deferral_backoff_seconds:
            raise ValueError("deferral_backoff_seconds needs at least one wait")
        if self.max_submissions < 1 or self.chunk_rows < 1:
            raise ValueError("max_submissions and chunk_rows must be at least 1")

    def requeue_backoff(self, submissions: int) -> float:
        """How long a shard whose `submissions`-th submission was turned away waits."""
        doubled = self.requeue_backoff_seconds * 2 ** min(max(submissions - 1, 0), 16)
        return min(doubled, self.max_requeue_backoff_seconds)

    def deferral_backoff(self, deferrals: int) -> float:
        """How long a shard waits after the `deferrals`-th try of one submission was cut
        short."""
        ladder = self.deferral_backoff_seconds
        if deferrals <= len(ladder):
            return ladder[max(deferrals, 1) - 1]
        doubled = ladder[-1] * 2 ** min(deferrals - len(ladder), 16)
        return min(doubled, self.max_requeue_backoff_seconds)


DEFAULT_TUNING = Tuning()
