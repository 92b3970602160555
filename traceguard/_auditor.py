"""The :class:`Auditor` interface: a trace in, a verdict out, sync and async, one or many."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence

from traceguard._trace import Trace
from traceguard._verdict import Verdict

__all__ = ["Auditor"]


class Auditor(abc.ABC):
    """Grades traces. Every auditor in traceguard implements this interface.

    Contract:

    - ``audit`` never raises for a failure of the auditor or its output: it returns a
      :class:`Verdict` whose ``status`` says what went wrong (auditor error, unparseable output,
      invalid input). Programming errors (a wrong argument type) still raise.
    - ``audit_batch`` returns exactly one verdict per trace, in order.
    - Subclasses implement at least :meth:`audit_batch`; the async side defaults to running the
      sync side in a worker thread, so it never blocks the event loop. Auditors with native async
      I/O (the HTTP backend) override :meth:`aaudit_batch`.
    """

    name: str = "auditor"

    @abc.abstractmethod
    def audit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Audit several traces; one verdict each, in input order."""

    def audit(self, trace: Trace) -> Verdict:
        """Audit one trace."""
        return self.audit_batch([trace])[0]

    async def aaudit_batch(self, traces: Sequence[Trace]) -> list[Verdict]:
        """Async :meth:`audit_batch`; by default the sync one in a worker thread."""
        return await asyncio.to_thread(self.audit_batch, list(traces))

    async def aaudit(self, trace: Trace) -> Verdict:
        """Async :meth:`audit`."""
        return (await self.aaudit_batch([trace]))[0]

    def close(self) -> None:  # noqa: B027 - optional hook, most auditors hold nothing
        """Release clients, threads or models held by this auditor."""

    async def aclose(self) -> None:
        """Async :meth:`close`."""
        self.close()

    def __enter__(self) -> Auditor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
