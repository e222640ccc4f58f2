"""Table recovery that seeks the stream partitions before it resumes them.

faust-streaming 0.15's ``Recovery.on_recovery_completed`` resumes the stream partitions and
*then* seeks them to their committed offsets. Its fetcher is already running (it read the
changelogs), so in that window it delivers records from the pre-seek position; the seek then
rewinds faust's read offset under records still in flight. What follows is a corrupt offset
book-keeping: offsets acked twice (the committed offset then creeps forward by one per commit
interval) or offsets dropped as "already read" while never processed (the committed offset
stops for good and the partition's backlog is never consumed). We saw both after repeated
SIGKILLs, when a restarted worker recovers every partition at once.

The upstream code has the same order (checked against faust-streaming master, 2026-08); this
subclass only swaps it: seek while the partitions are still paused, then resume. Everything
else is faust's own method, in faust's order, so an upgrade can be diffed against it.
"""

from __future__ import annotations

import asyncio

from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery


class SeekThenResumeRecovery(Recovery):
    async def on_recovery_completed(self, generation_id: int = 0) -> None:
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callback_coros = [
            asyncio.ensure_future(
                table.on_recovery_completed(
                    self.actives_for_table[table], self.standbys_for_table[table]
                )
            )
            for table in self.tables.values()
        ]
        if callback_coros:
            await asyncio.wait(callback_coros)
        assignment = consumer.assignment()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning(
                "Recovery rebalancing again app id %s param %s",
                self.app.consumer_generation_id,
                generation_id,
            )
            return
        stream_tps = {tp for tp in assignment if not self._is_changelog_tp(tp)}
        if assignment:
            self.log.info("Seek stream partitions to committed offsets (still paused).")
            await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        consumer.resume_partitions(stream_tps)
        self.completed.set()
        self.app.flow_control.resume()
        consumer.resume_flow()
        await self.app._fetcher.maybe_start()  # type: ignore[attr-defined]
        self.tables.on_actives_ready()
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")


class LoopwiseTableManager(TableManager):
    """faust's table manager with :class:`SeekThenResumeRecovery` (``App(TableManager=…)``)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SeekThenResumeRecovery(
                self.app, self, beacon=self.beacon, loop=self.loop
            )
        return self._recovery
