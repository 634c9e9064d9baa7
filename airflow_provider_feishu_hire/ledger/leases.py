"""Which try of a task may send, which incarnation of a DAG run a task belongs to, and one pace for all.

A try whose worker was presumed dead can live on as a zombie beside its retry, and a deleted
run can be re-created under the same ``run_id`` while the old one's tries live on. The
newest try of the newest run generation holds the task instance's lease; every claim checks
it in its own transaction, so any other try sends nothing.

The shared pace hands every sender of every worker its own send slot, by the database's clock.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import extract, func, literal_column, select, update
from sqlalchemy.engine import Connection

from airflow_provider_feishu_hire.ledger.database import Database, dialect_of, insert_new
from airflow_provider_feishu_hire.ledger.model import Lease, Superseded, TaskTry, now_iso
from airflow_provider_feishu_hire.ledger.schema import pace, run_generation, task_lease

# Senders waiting for one pace at once: every thread of every worker holds one slot at a time, so a
# stored slot this many intervals ahead came from a skewed clock, not from a queue.
_MAX_QUEUED_SLOTS = 1000
# The database's clock in epoch seconds. SQLite lives on one machine, whose clock is the only one.
_CLOCKS: dict[str, Any] = {
    "postgresql": extract("epoch", func.clock_timestamp()),
    "mysql": func.unix_timestamp(func.sysdate(literal_column("6"))),  # microseconds
}


class Leases(Database):
    """Run generations, task leases and the shared pace."""

    def run_generation(self, dag_id: str, run_id: str, clear_number: int, run_start: str) -> int:
        """The incarnation of the DAG run ``(dag_id, run_id)`` that a task seeing these run facts belongs to.

        Airflow lets a run be deleted and created again under the same ``run_id`` (scheduled
        and logical-date runs have deterministic ids). Its ``clear_number`` counts the clears
        of one run, from 0, and every clear gives the run a new ``start_date``; a re-created
        run starts again at 0 with a new ``start_date``. So facts seen before belong to the
        generation that saw them, a higher ``clear_number`` than any seen is a clear of the
        newest generation, and anything else is a new generation.
        """
        t = run_generation.c
        seen = select(t.run_generation).where(
            t.dag_id == dag_id, t.run_id == run_id, t.clear_number == clear_number, t.run_start == run_start
        )
        with self._begin() as conn:
            found = conn.execute(seen).scalar_one_or_none()
            if found is not None:
                return int(found)
            newest = conn.execute(
                select(t.run_generation, func.max(t.clear_number))
                .where(t.dag_id == dag_id, t.run_id == run_id)
                .group_by(t.run_generation)
                .order_by(t.run_generation.desc())
                .limit(1)
            ).first()
            if newest is None:
                generation = 1
            else:
                generation = int(newest[0]) if clear_number > int(newest[1]) else int(newest[0]) + 1
            # Tasks of one run that start together compute the same answer: the first insert wins.
            insert_new(
                conn,
                run_generation,
                {"dag_id": dag_id, "run_id": run_id, "clear_number": clear_number, "run_start": run_start,
                 "run_generation": generation, "seen_at": now_iso()},
            )  # fmt: skip
            return int(conn.execute(seen).scalar_one())

    def take_lease(self, task: TaskTry) -> Lease:
        """Make ``task`` the live try of its task instance if it is the newest; return who holds the lease."""
        with self._begin() as conn:
            return self._take_lease(conn, task, first=True)

    def lease(self, task: TaskTry) -> Lease:
        """Who holds ``task``'s lease now (``held`` when ``task`` does, or nobody took one)."""
        with self._begin(write=False) as conn:
            holder = self._lease(conn, task)
        if holder is None:
            return Lease(task.try_number, task.run_generation, held=True)
        return Lease(holder.try_number, holder.run_generation, held=_same_try(task, holder))

    def _check_lease(self, conn: Connection, task: TaskTry) -> None:
        """Refuse a try that no longer holds its task's lease (a newer one takes it over, as Airflow started it)."""
        lease = self._take_lease(conn, task, first=False)
        if not lease.held:
            raise Superseded(lease.describe(task))

    def _take_lease(self, conn: Connection, task: TaskTry, *, first: bool) -> Lease:
        """Take the lease for a newer try; ``first`` also takes a lease nobody holds yet.

        The row is inserted first (two tries starting at once both may; one insert wins),
        then locked and compared, so concurrent takers never race on the primary key.
        """
        key = {"dag_id": task.dag_id, "run_id": task.run_id, "task_id": task.task_id, "map_index": task.map_index}
        taken = {"try_number": task.try_number, "taken_at": now_iso(), "ti_id": task.ti_id,
                 "run_generation": task.run_generation}  # fmt: skip
        if first:
            insert_new(conn, task_lease, {**key, **taken})
        holder = self._lease(conn, task, lock=True)
        if holder is None or _same_try(task, holder):  # no holder: a caller that takes no lease
            return Lease(task.try_number, task.run_generation, held=True)
        if _newer(task, holder):
            conn.execute(update(task_lease).where(*_lease_key(task)).values(taken))
            return Lease(task.try_number, task.run_generation, held=True)
        return Lease(holder.try_number, holder.run_generation, held=False)

    def _lease(self, conn: Connection, task: TaskTry, *, lock: bool = False) -> TaskTry | None:
        t = task_lease.c
        query = select(t.try_number, t.ti_id, t.run_generation).where(*_lease_key(task))
        found = conn.execute(query.with_for_update() if lock else query).first()
        if found is None:
            return None
        try_number, ti_id, generation = found
        return TaskTry(task.dag_id, task.run_id, task.task_id, task.map_index, int(try_number), ti_id, int(generation))

    def reserve_wait(self, pace_key: str, interval: float) -> float:
        """Reserve the next free send slot of ``pace_key``, ``interval`` after the last; return the seconds to wait.

        One short transaction on a locked row: however many threads, processes and
        machines ask at once, each gets its own slot, and consecutive slots are at least
        ``interval`` apart. Slots are kept, and the wait measured, by the database's clock
        (SQLite lives on one machine, whose clock is the only one): a worker whose clock is
        an hour ahead cannot make the others wait an hour. A stored slot further ahead than
        any queue of waiting senders could make (written by a skewed clock) is dropped.
        """
        with self._begin() as conn:
            insert_new(conn, pace, {"pace_key": pace_key, "next_slot": 0.0})
            next_slot = float(
                conn.execute(select(pace.c.next_slot).where(pace.c.pace_key == pace_key).with_for_update()).scalar_one()
            )
            clock = _CLOCKS.get(dialect_of(conn))  # read once the row is ours: waiting for it takes time
            now = time.time() if clock is None else float(conn.execute(select(clock)).scalar_one())
            if next_slot > now + _MAX_QUEUED_SLOTS * interval:
                next_slot = now
            slot = max(now, next_slot)
            conn.execute(update(pace).where(pace.c.pace_key == pace_key).values(next_slot=slot + interval))
        return slot - now


def _lease_key(task: TaskTry) -> tuple[Any, ...]:
    t = task_lease.c
    return (t.dag_id == task.dag_id, t.run_id == task.run_id, t.task_id == task.task_id, t.map_index == task.map_index)


def _same_try(task: TaskTry, holder: TaskTry) -> bool:
    return (task.run_generation, task.try_number, task.ti_id) == (
        holder.run_generation,
        holder.try_number,
        holder.ti_id,
    )


def _newer(task: TaskTry, holder: TaskTry) -> bool:
    """A later run generation, or a later try of the same one: Airflow never runs an older try again."""
    if task.run_generation != holder.run_generation:
        return task.run_generation > holder.run_generation
    return task.try_number > holder.try_number
