"""The payouts console's FastAPI app, mounted by Airflow's api-server under ``/feishu-payouts``.

Airflow's security model, not one of our own: every request carries the JWT the Airflow UI
uses (its ``_token`` cookie, or ``Authorization: Bearer``), read by Airflow's ``get_user``;
no valid token is 401 (the page itself redirects to Airflow's login). What a user sees is
limited to the DAGs Airflow's auth manager lets them read (``get_authorized_dag_ids``); a
settlement is proposed or confirmed only with edit access to the DAG that sent the order
(``is_authorized_dag`` with ``PUT``), in the name of the logged-in user, and the ledger
refuses a confirmation by the proposer. POSTs must be JSON, which a cross-site form cannot
send without the browser asking first.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import threading
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from airflow.api_fastapi.core_api.security import get_user, resolve_user_from_token
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from airflow_provider_feishu_hire.console import queries
from airflow_provider_feishu_hire.ledger import DEFAULT_LEDGER_CONN_ID, Ledger, LedgerError
from airflow_provider_feishu_hire.payroll import COLUMNS, payroll_rows

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_PAGE = 500
_AMOUNT = re.compile(r"\d{1,13}(\.\d{1,2})?")  # whole cents, as Feishu pays (fullmatch: no trailing newline)
_CURRENCY = re.compile(r"[A-Z]{3}")
_MAX_INT = 2**63 - 1  # what the ledger's BIGINT columns hold: more is refused here, not a database error
Text = Annotated[str | None, Query(max_length=250)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]


# -- the ledger: one per process, opened on first use --------------------------------------------

_ledger_lock = threading.Lock()
_ledger: Ledger | None = None


def ledger_conn_id() -> str:
    """``[feishu_hire] console_ledger_conn_id`` in Airflow's config, or the operators' default."""
    from airflow.configuration import conf

    return str(conf.get("feishu_hire", "console_ledger_conn_id", fallback=DEFAULT_LEDGER_CONN_ID))


def get_ledger() -> Ledger:
    """The ledger the operators write; 503 (without the cause's text, which may name hosts) when it cannot open."""
    global _ledger
    with _ledger_lock:
        if _ledger is None:
            from airflow_provider_feishu_hire.hooks.ledger import FeishuHireLedgerHook

            try:
                _ledger = FeishuHireLedgerHook(ledger_conn_id()).ledger
            except Exception as exc:
                log.warning("Feishu payouts console: the payout ledger cannot be opened (%s)", type(exc).__name__)
                raise HTTPException(503, f"the payout ledger cannot be opened ({type(exc).__name__})") from None
        return _ledger


# -- who is asking, and what Airflow lets them do ------------------------------------------------


def get_auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager as airflow_auth_manager

    return airflow_auth_manager()


# Airflow's own ``get_user``: the UI's cookie or a bearer token; 401 without one, 403 for a bad token.
User = Annotated[Any, Depends(get_user)]
AuthManager = Annotated[Any, Depends(get_auth_manager)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]


def user_name(user: Any) -> str:
    name = str(user.get_name() or "").strip()
    if not name:
        raise HTTPException(403, "your Airflow user has no name to record in the ledger")
    return name


def readable_dags(user: Any, auth: Any) -> set[str]:
    return set(auth.get_authorized_dag_ids(user=user, method="GET"))


def _team(dag_id: str) -> str | None:
    try:
        from airflow.models.dag import DagModel

        get_team_name = getattr(DagModel, "get_team_name", None)
        return None if get_team_name is None else get_team_name(dag_id)
    except Exception:  # a DAG unknown to Airflow has no team
        return None


def require_dag(user: Any, auth: Any, dag_id: str, method: Literal["GET", "PUT"]) -> None:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    if not auth.is_authorized_dag(method=method, user=user, details=DagDetails(id=dag_id, team_name=_team(dag_id))):
        verb = "read" if method == "GET" else "edit"
        raise HTTPException(403, f"you may not {verb} DAG {dag_id}")


def _scope(user: Any, auth: Any, dag_id: str | None) -> set[str]:
    """The DAG ids a listing may show: the readable ones, or the one asked for (403 if not readable)."""
    readable = readable_dags(user, auth)
    if dag_id is not None and dag_id not in readable:
        raise HTTPException(403, f"you may not read DAG {dag_id}")
    return readable


def _json_request(request: Request) -> None:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
        raise HTTPException(415, "send JSON (Content-Type: application/json)")


def _task_url(row: dict[str, Any]) -> str:
    url = "/dags/{}/runs/{}/tasks/{}".format(*(quote(str(row[k]), safe="") for k in ("dag_id", "run_id", "task_id")))
    return url + (f"/mapped/{row['map_index']}" if int(row["map_index"]) >= 0 else "")


def _with_links(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for row in rows:
        row["task_url"] = _task_url(row)
    return rows


def _blank(value: str | None) -> str | None:
    return value if value else None


# -- the asset events that announced a batch (Airflow's metadata database, not the ledger) ---------

EventFinder = Callable[[Sequence[dict[str, Any]]], dict[int, list[dict[str, Any]]]]


def airflow_asset_events(batches: Sequence[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Per batch id, the Airflow asset events that carried it, oldest first.

    The export announces its batches on its outlet (``feishu_hire_payroll`` unless the DAG
    chose others) with ``payroll_batch_ids`` in the event's extra; a cleared export announces
    again every batch that task made. So an event carried a batch when it was emitted by the
    task that made the batch (same DAG, run and task) and its extra lists the batch's id. An
    export that failed emitted nothing: its batches have no event until its next success.
    """
    if not batches:
        return {}
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    query = (
        select(
            AssetEvent.id, AssetEvent.asset_id, AssetEvent.extra, AssetEvent.source_dag_id, AssetEvent.source_run_id,
            AssetEvent.source_task_id, AssetEvent.source_map_index, AssetEvent.timestamp, AssetModel.name,
            AssetModel.uri,
        )
        .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
        .where(
            AssetEvent.source_dag_id.in_(sorted({b["dag_id"] for b in batches})),
            AssetEvent.source_run_id.in_(sorted({b["run_id"] for b in batches})),
            AssetEvent.source_task_id.in_(sorted({b["task_id"] for b in batches})),
        )
        .order_by(AssetEvent.timestamp, AssetEvent.id)
    )  # fmt: skip
    with create_session() as session:
        events = session.execute(query).all()
    found: dict[int, list[dict[str, Any]]] = {}
    for event_id, asset_id, extra, dag_id, run_id, task_id, map_index, when, name, uri in events:
        ids = extra.get("payroll_batch_ids") if isinstance(extra, dict) else None
        if not isinstance(ids, list):
            continue
        for batch in batches:
            if batch["id"] in ids and (batch["dag_id"], batch["run_id"], batch["task_id"]) == (dag_id, run_id, task_id):
                found.setdefault(batch["id"], []).append(
                    _event_json(event_id, asset_id, name, uri, when, dag_id, run_id, task_id, map_index, ids)
                )
    return found


def _event_json(
    event_id: int, asset_id: int, name: str, uri: str, when: Any, dag_id: str, run_id: str, task_id: str,
    map_index: int | None, ids: list[Any],
) -> dict[str, Any]:  # fmt: skip
    task = {"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": -1 if map_index is None else map_index}
    return {
        "id": int(event_id),
        "asset_id": int(asset_id),
        "asset_name": name,
        "asset_uri": uri,
        "timestamp": when.isoformat() if hasattr(when, "isoformat") else str(when),
        "payroll_batch_ids": [int(i) for i in ids if isinstance(i, int)],
        "asset_url": f"/assets/{int(asset_id)}",
        "task_events_url": _task_url(task) + "/asset_events",
        "run_url": "/dags/{}/runs/{}".format(*(quote(str(v), safe="") for v in (dag_id, run_id))),
    }


def get_asset_event_finder() -> EventFinder:
    return airflow_asset_events


EventsDep = Annotated[EventFinder, Depends(get_asset_event_finder)]


def _with_events(batches: list[dict[str, Any]], find: EventFinder) -> list[dict[str, Any]]:
    events = find(batches)
    for batch in batches:
        batch["asset_events"] = events.get(batch["id"], [])
        batch["export_url"] = _task_url(batch)
    return batches


# -- the request bodies ----------------------------------------------------------------------------


class ProposeBody(BaseModel):
    """One person's account of an order: paid (Feishu's trans_time, points, cash as decimal strings) or not."""

    model_config = ConfigDict(extra="forbid", strict=True)

    paid: bool
    evidence: str = Field(min_length=1, max_length=4000)
    trans_time: int | None = Field(default=None, ge=0, le=_MAX_INT)
    point_bonus: int | None = Field(default=None, ge=0, le=_MAX_INT)
    cash_bonus: dict[str, str] = Field(default_factory=dict, max_length=20)

    def cash(self) -> dict[str, Decimal]:
        out = {}
        for currency, amount in self.cash_bonus.items():
            if not _CURRENCY.fullmatch(currency) or not _AMOUNT.fullmatch(amount):
                raise HTTPException(
                    422, f"cash_bonus {currency}={amount!r}: give a currency code and an amount in cents, like '12.50'"
                )
            out[currency] = Decimal(amount)
        return out


class ConfirmBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# -- the app -----------------------------------------------------------------------------------------


def create_app() -> FastAPI:
    app = FastAPI(
        title="Feishu payouts",
        description="The payout ledger of airflow-provider-feishu-hire, behind Airflow's login and permissions.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page(request: Request) -> Response:
        try:
            await resolve_user_from_token(request.cookies.get("_token"))
        except HTTPException:
            login = get_auth_manager().get_url_login(next_url=str(request.url))
            return RedirectResponse(login, status_code=307)
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/api/me")
    def me(user: User, auth: AuthManager) -> dict[str, Any]:
        return {"name": user_name(user), "readable_dags": sorted(readable_dags(user, auth))}

    @app.get("/api/withdrawals")
    def list_withdrawals(
        user: User,
        auth: AuthManager,
        ledger: LedgerDep,
        dag_id: Text = None,
        run_id: Text = None,
        referral_account_id: Text = None,
        status: Annotated[Literal[queries.STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
        app_id: Text = None,
        date_from: date | None = None,
        date_to: date | None = None,
        payroll_batch_id: Annotated[int | None, Query(ge=1)] = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        dag_id = _blank(dag_id)
        readable = _scope(user, auth, dag_id)
        try:
            flt = queries.WithdrawalFilter(
                dag_id, _blank(run_id), _blank(referral_account_id), status, _blank(app_id), date_from, date_to,
                payroll_batch_id,
            )  # fmt: skip
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        rows, more = queries.withdrawals(ledger, flt, readable, limit=limit, offset=offset)
        # A run's totals, beside its rows: one run's rows are few and indexed (dag_id, run_id); all rows are not.
        summed = queries.totals(ledger, flt, readable) if flt.run_id is not None else None
        return {"withdrawals": _with_links(rows), "limit": limit, "offset": offset, "more": more, "totals": summed}

    @app.get("/api/needs-attention")
    def needs_attention(user: User, auth: AuthManager, ledger: LedgerDep, limit: Limit = 100) -> dict[str, Any]:
        found = queries.needs_attention(ledger, readable_dags(user, auth), limit=limit)
        for name in ("review", "stuck_sending", "needs_approval", "rejected"):
            _with_links(found[name]["rows"])
        found["what_to_do"] = {
            "review": "Money may have moved: find the withdrawal in Feishu, then propose a settlement with evidence; "
            "a second person confirms it. It is never re-sent.",
            "stuck_sending": "No send can still answer: clear the task to send the same order id again (Feishu "
            "replays what it paid), or settle it with evidence.",
            "needs_approval": "The balance is more than the approval covered: clear the preview and the approval "
            "of the run, then the withdrawal.",
            "rejected": "Feishu refused and no money moved: fix the cause named, then clear the task.",
            "pending_settlements": "Another person than the proposer confirms, or proposes a different settlement.",
        }
        return found

    @app.get("/api/withdrawals/{external_order_id}")
    def withdrawal_detail(
        user: User, auth: AuthManager, ledger: LedgerDep, external_order_id: Annotated[str, PathParam(max_length=64)]
    ) -> dict[str, Any]:
        row = queries.withdrawal(ledger, external_order_id)
        if row is None:
            raise HTTPException(404, f"the ledger holds no order {external_order_id}")
        require_dag(user, auth, row["dag_id"], "GET")
        full = ledger.get(external_order_id)
        _with_links([row])
        row["raw_answer"] = None if full is None else full.raw_answer
        row["attempt_list"] = ledger.attempts(external_order_id)
        row["settlements"] = [_settlement_json(s) for s in ledger.settlements(external_order_id)]
        row["may_edit"] = _may_edit(user, auth, row["dag_id"])
        return row

    @app.post("/api/withdrawals/{external_order_id}/settlements", status_code=201)
    def propose(
        request: Request,
        body: ProposeBody,
        user: User,
        auth: AuthManager,
        ledger: LedgerDep,
        external_order_id: Annotated[str, PathParam(max_length=64)],
    ) -> dict[str, Any]:
        _json_request(request)
        row = queries.withdrawal(ledger, external_order_id)
        if row is None:
            raise HTTPException(404, f"the ledger holds no order {external_order_id}")
        require_dag(user, auth, row["dag_id"], "PUT")
        cash = body.cash()
        try:
            proposal = ledger.propose_settlement(
                external_order_id, paid=body.paid, evidence=body.evidence, proposed_by=user_name(user),
                trans_time=body.trans_time, point_bonus=body.point_bonus, cash_bonus=cash,
            )  # fmt: skip
        except LedgerError as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("Settlement %s of order %s proposed by %s", proposal.id, external_order_id, proposal.proposed_by)
        return _settlement_json(proposal)

    @app.post("/api/settlements/{settlement_id}/confirm")
    def confirm(
        request: Request,
        body: ConfirmBody,
        user: User,
        auth: AuthManager,
        ledger: LedgerDep,
        settlement_id: Annotated[int, PathParam(ge=1)],
    ) -> dict[str, Any]:
        _json_request(request)
        found = queries.settlement_owner(ledger, settlement_id)
        if found is None:
            raise HTTPException(404, f"no settlement {settlement_id}")
        order_id, proposed_by, dag_id, _confirmed = found
        require_dag(user, auth, dag_id, "PUT")
        name = user_name(user)
        if name == proposed_by:
            raise HTTPException(403, f"settlement {settlement_id} was proposed by you: another person must confirm it")
        try:
            ledger.confirm_settlement(settlement_id, name)
        except LedgerError as exc:
            raise HTTPException(409, str(exc)) from None
        log.info("Settlement %s of order %s confirmed by %s", settlement_id, order_id, name)
        row = queries.withdrawal(ledger, order_id)
        assert row is not None
        return _with_links([row])[0]

    @app.get("/api/payroll-batches")
    def batches(
        user: User,
        auth: AuthManager,
        ledger: LedgerDep,
        find_events: EventsDep,
        dag_id: Text = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        dag_id = _blank(dag_id)
        readable = _scope(user, auth, dag_id)
        found, more = queries.payroll_batches(ledger, readable, dag_id=dag_id, limit=limit, offset=offset)
        return {"payroll_batches": _with_events(found, find_events), "limit": limit, "offset": offset, "more": more}

    def _readable_batch(user: Any, auth: Any, ledger: Ledger, batch_id: int) -> dict[str, Any]:
        found = queries.payroll_batch(ledger, batch_id)
        if found is None:
            raise HTTPException(404, f"no payroll batch {batch_id}")
        batch, dags = found
        hidden = sorted(dags - readable_dags(user, auth))
        if hidden:
            raise HTTPException(403, f"payroll batch {batch_id} holds withdrawals of DAGs you may not read")
        return batch

    @app.get("/api/payroll-batches/{batch_id}")
    def batch_detail(
        user: User,
        auth: AuthManager,
        ledger: LedgerDep,
        find_events: EventsDep,
        batch_id: Annotated[int, PathParam(ge=1)],
        limit: Limit = MAX_PAGE,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        batch = _with_events([_readable_batch(user, auth, ledger, batch_id)], find_events)[0]
        members, more = queries.withdrawals(
            ledger, queries.WithdrawalFilter(payroll_batch_id=batch_id), readable_dags(user, auth), limit=limit,
            offset=offset,
        )  # fmt: skip
        return {**batch, "members": _with_links(members), "limit": limit, "offset": offset, "more": more}

    @app.get("/api/payroll-batches/{batch_id}/csv")
    def batch_csv(
        user: User, auth: AuthManager, ledger: LedgerDep, batch_id: Annotated[int, PathParam(ge=1)]
    ) -> Response:
        _readable_batch(user, auth, ledger, batch_id)
        (batch,) = ledger.payroll_batches(payroll_batch_id=batch_id)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(payroll_rows(batch.members))
        name = f"payroll_batch{batch_id}.csv"
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/api/reconciliations")
    def list_reconciliations(
        user: User,
        auth: AuthManager,
        ledger: LedgerDep,
        dag_id: Text = None,
        only_mismatched: bool = False,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> dict[str, Any]:
        dag_id = _blank(dag_id)
        readable = _scope(user, auth, dag_id)
        found, more = queries.reconciliations(
            ledger, readable, dag_id=dag_id, only_mismatched=only_mismatched, limit=limit, offset=offset
        )
        return {"reconciliations": found, "limit": limit, "offset": offset, "more": more}

    @app.get("/api/paid-per-day")
    def paid_per_day(
        user: User,
        auth: AuthManager,
        ledger: LedgerDep,
        date_from: date | None = None,
        date_to: date | None = None,
        dag_id: Text = None,
        app_id: Text = None,
    ) -> dict[str, Any]:
        dag_id = _blank(dag_id)
        readable = _scope(user, auth, dag_id)
        day_to = date_to or datetime.now(timezone.utc).date()
        day_from = date_from or day_to - timedelta(days=29)
        if day_from > day_to:
            raise HTTPException(422, "date_from is after date_to")
        if (day_to - day_from).days >= queries.MAX_DAYS:
            raise HTTPException(422, f"choose at most {queries.MAX_DAYS} days")
        return queries.paid_per_day(
            ledger, readable, day_from=day_from, day_to=day_to, dag_id=dag_id, app_id=_blank(app_id)
        )

    return app


def _may_edit(user: Any, auth: Any, dag_id: str) -> bool:
    try:
        require_dag(user, auth, dag_id, "PUT")
    except HTTPException:
        return False
    return True


def _settlement_json(settlement: Any) -> dict[str, Any]:
    from airflow_provider_feishu_hire.withdrawal import format_money

    return {
        "id": settlement.id,
        "external_order_id": settlement.external_order_id,
        "paid": settlement.paid,
        "trans_time": settlement.trans_time,
        "point_bonus": settlement.point_bonus,
        "cash_bonus": {c: format_money(a) for c, a in sorted(settlement.cash_bonus.items())},
        "evidence": settlement.evidence,
        "proposed_by": settlement.proposed_by,
        "proposed_at": settlement.proposed_at,
        "confirmed_by": settlement.confirmed_by,
        "confirmed_at": settlement.confirmed_at,
    }
