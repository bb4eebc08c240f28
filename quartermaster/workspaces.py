"""Records of another workspace on a topic deployments may share: told apart, skipped,
counted and said once per workspace.

Every Quartermaster deployment serves one workspace (QM_WORKSPACE_ID), and its topics
may be shared with another deployment's, or a producer may name the wrong workspace.
A consumer that applied such a record would count another workspace's spend against
this one's people (user ids are not unique across workspaces), install its credit
grants or send its notices. Each consumer asks `ForeignRecords.foreign(ws)` first and
skips what it says is foreign; metering, where a record is money, sends it to the DLQ
instead (`services.metering.decode`).

Pure: a WARNING per foreign workspace (the first `remember` of them; one line, not
one per record: a shared topic carries them by the thousand) and counts.
"""

from __future__ import annotations

import logging


class ForeignRecords:
    """Tells `here`'s records from other workspaces' on one consumer (`what`, e.g.
    "qm.usage.totals.v1 (policy)"). `empty_is_here`: whether a record naming no
    workspace is this one's (the contract of usage events, totals and request events:
    a single-workspace producer may leave it empty); notification intents always name
    theirs, so their consumer says False. `here` "" skips nothing (a TotalsIndex built
    without a workspace, as a bench does). `count` is how many were skipped,
    `by_workspace` per workspace (the first `remember` workspaces)."""

    def __init__(
        self,
        here: str,
        what: str,
        logger: logging.Logger,
        empty_is_here: bool = True,
        remember: int = 100,
    ) -> None:
        self.here = here
        self.what = what
        self.empty_is_here = empty_is_here
        self.count = 0
        self.by_workspace: dict[str, int] = {}
        self._log = logger
        self._remember = remember

    def foreign(self, workspace_id: str) -> bool:
        """True (counted, and logged the first time for that workspace) when a record
        naming `workspace_id` is not this workspace's and must be skipped."""
        if not self.here or workspace_id == self.here:
            return False  # no workspace of its own ("": a bench, a one-layer test): any
        if not workspace_id and self.empty_is_here:
            return False
        self.count += 1
        seen = self.by_workspace.get(workspace_id)
        if seen is not None:
            self.by_workspace[workspace_id] = seen + 1
        elif len(self.by_workspace) < self._remember:
            self.by_workspace[workspace_id] = 1
            self._log.warning(
                "%s: skipping records of workspace %r; this deployment serves workspace "
                "%r (QM_WORKSPACE_ID). Said once per workspace; counted in "
                "ForeignRecords (%d so far)",
                self.what, workspace_id, self.here, self.count,
            )  # fmt: skip
        return True
