"""A local Feishu for tests and demos: tokens, referral accounts, real balances, idempotency, faults.

It follows the public API reference (envelopes, codes with their HTTP statuses,
``X-Tt-Logid``, rate-limit headers) and deliberately shares no code with the client, so
that the client's tests are tests against the API's shape, not against itself.
It binds to loopback only.

The API it serves (field names as in Feishu's docs and the official SDK's models):

- tokens: a custom app's ``POST /open-apis/auth/v3/tenant_access_token/internal``; a store
  (isv) app's ``POST /open-apis/auth/v3/app_ticket/resend``, ``POST
  /open-apis/auth/v3/app_access_token`` and ``POST /open-apis/auth/v3/tenant_access_token``;
- referral accounts under ``/open-apis/hire/v1/referral_account``: register (``POST``
  on the collection), ``POST {id}/deactivate``, ``POST enable``, ``POST {id}/withdraw``,
  ``GET get_account_assets`` and ``POST reconciliation``, which answers from the
  sandbox's own ledger of withdrawals;
- events over Feishu's long connection: ``POST /callback/ws/endpoint`` hands out a
  WebSocket URL (served by :mod:`.long_connection` on its own loopback port), which
  carries a ``hire.referral_account.assets_update_v1`` event every time a balance
  changes, until the client acknowledges it.

Where Feishu's documentation is silent (withdrawing an empty balance, replaying an order
whose account was deactivated since, registering a referrer twice, whether a
reconciliation window's end is inclusive, deactivating an account twice), the sandbox
offers each plausible behaviour behind a switch, so the client can be tested against all
of them rather than against a guess.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import secrets
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlsplit

from airflow_provider_feishu_hire.sandbox.long_connection import DEFAULT_CLIENT_CONFIG, LongConnection

DEFAULT_APP_ID = "cli_sandbox_app"
DEFAULT_APP_SECRET = "sandbox-app-secret-not-for-production"
DEFAULT_TENANT_KEY = "sandbox_tenant_key"
TOKEN_LIFETIME = 7200
TOKEN_REUSE_WINDOW = 1800  # Feishu hands back the same token while more than 30 minutes are left
REFERRAL_SCOPE = "hire:referral_account"
FAULT_KINDS = (
    "http_500",
    "rate_limit",
    "html_page",
    "drop_after_commit",
    "slow",
    "revoke_token",
    "malformed_answer",
    "busy",
    "connection_limit",
    "drop_connection",
    "duplicate_event",
    "split_event",
    "ignore_ack",
    "lose_event",
)
MALFORMED_VARIANTS = ("null_amount", "text_amount", "fractional_points")
_DEFAULT_STATUS = {"rate_limit": 429, "html_page": 502, "revoke_token": 400}
# Refusals of /callback/ws/endpoint, answered HTTP 200 with these codes (as the official SDK reads them).
_ENDPOINT_REFUSALS = {"busy": (1, "system busy"), "connection_limit": (1000040350, "too many connections")}
# Faults of the long connection's deliveries (target "events"), not of an HTTP endpoint.
# lose_event: Feishu never delivers the next event (an app unsubscribed for a while, pushes given up).
_EVENT_FAULTS = ("drop_connection", "duplicate_event", "split_event", "ignore_ack", "lose_event")
# Fault targets. "token" is whichever endpoint hands out tenant_access_tokens (the custom
# app's /internal one or the store app's), "app_token" the store app's app_access_token,
# "app_ticket" the store app's ticket resend, "ws_endpoint" the long connection's
# /callback/ws/endpoint; "events" is the long connection's deliveries; "any" is every HTTP endpoint.
_COUNTED = (
    "token",
    "withdraw",
    "assets",
    "register",
    "deactivate",
    "enable",
    "reconciliation",
    "app_ticket",
    "app_token",
)
ENDPOINTS = (*_COUNTED, "ws_endpoint", "events", "any")
# What state()["requests"] counts: the endpoints' accepted calls, and the calls refused with a 429.
# The long connection's own counts are in state()["long_connection"].
COUNTERS = (*_COUNTED, "rate_limited")
USER_ID_TYPES = ("open_id", "union_id", "user_id", "people_admin_id")
EmptyWithdrawal = Literal["zeros", "error"]
ReplayAfterDeactivate = Literal["original", "error"]
Reregister = Literal["existing", "error"]
ReconcileEnd = Literal["inclusive", "exclusive"]
RepeatStatusChange = Literal["idempotent", "error"]
AppType = Literal["custom", "isv"]
EMPTY_WITHDRAWAL_MODES: tuple[str, ...] = get_args(EmptyWithdrawal)
REPLAY_AFTER_DEACTIVATE_MODES: tuple[str, ...] = get_args(ReplayAfterDeactivate)
REREGISTER_MODES: tuple[str, ...] = get_args(Reregister)
RECONCILE_END_MODES: tuple[str, ...] = get_args(ReconcileEnd)
REPEAT_STATUS_CHANGE_MODES: tuple[str, ...] = get_args(RepeatStatusChange)
APP_TYPES: tuple[str, ...] = get_args(AppType)

_HIRE = "/open-apis/hire/v1/referral_account"
_WITHDRAW = re.compile(r"^/open-apis/hire/v1/referral_account/([^/]+)/withdraw$")
_DEACTIVATE = re.compile(r"^/open-apis/hire/v1/referral_account/([^/]+)/deactivate$")
_ASSETS = f"{_HIRE}/get_account_assets"
_REGISTER = _HIRE
_ENABLE = f"{_HIRE}/enable"
_RECONCILIATION = f"{_HIRE}/reconciliation"
_TOKEN = "/open-apis/auth/v3/tenant_access_token/internal"
_ISV_TENANT_TOKEN = "/open-apis/auth/v3/tenant_access_token"
_ISV_APP_TOKEN = "/open-apis/auth/v3/app_access_token"
_APP_TICKET_RESEND = "/open-apis/auth/v3/app_ticket/resend"
_WS_ENDPOINT = "/callback/ws/endpoint"
ASSETS_UPDATE = "hire.referral_account.assets_update_v1"
DEFAULT_VERIFICATION_TOKEN = "sandbox-verification-token"
_ROUTES = {
    ("POST", _TOKEN): "token",
    ("POST", _ISV_TENANT_TOKEN): "token",
    ("POST", _ISV_APP_TOKEN): "app_token",
    ("POST", _APP_TICKET_RESEND): "app_ticket",
    ("GET", _ASSETS): "assets",
    ("POST", _REGISTER): "register",
    ("POST", _ENABLE): "enable",
    ("POST", _RECONCILIATION): "reconciliation",
    ("POST", _WS_ENDPOINT): "ws_endpoint",
}
# No Authorization header; never rate limited here.
_TOKEN_ENDPOINTS = ("token", "app_token", "app_ticket", "ws_endpoint")
_TRANS_TIME = re.compile(r"[0-9]{1,19}")
_MOBILE_CODE = re.compile(r"\+?([0-9]{1,4})")
_MOBILE_NUMBER = re.compile(r"[0-9]{4,20}")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_CENT = Decimal("0.01")
_DECIMAL_MARK = re.compile(r'"\\u0000(-?[0-9.]+)\\u0000"')
_NOT_FOUND = {"code": 404, "msg": "404 page not found"}
_SAMPLE_MESSAGE = {
    "sender": {"sender_id": {"open_id": "ou_sandbox_sender"}, "sender_type": "user"},
    "message": {"message_id": "om_sandbox_message", "message_type": "text", "content": '{"text":"hello"}'},
}


@dataclass
class Referrer:
    """The person behind a registered account, as ``get_account_assets`` shows them under ``referrer``.

    The shape is the official SDK's ``AccountReferrer``: ``id`` (in the ``user_id_type``
    asked for), ``name`` as i18n text ``{"zh_cn", "en_us"}``, ``email`` and ``mobile`` as
    strings (the sandbox writes a mobile as ``+<code><number>``; Feishu's exact spelling
    is unconfirmed). Only what the account was registered with is shown.
    """

    ids: dict[str, str]
    name: dict[str, str]
    email: str | None = None
    mobile: str | None = None

    def to_json(self, user_id_type: str = "open_id") -> dict[str, Any]:
        shown: dict[str, Any] = {"id": self.ids[user_id_type], "name": dict(self.name)}
        if self.email is not None:
            shown["email"] = self.email
        if self.mobile is not None:
            shown["mobile"] = self.mobile
        return shown


@dataclass
class Account:
    account_id: str
    point_bonus: int = 0
    cash_bonus: dict[str, Decimal] = field(default_factory=dict)
    enabled: bool = True
    referrer: Referrer | None = None  # accounts registered through the API have one; demo accounts do not

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> Account:
        """``{"account_id", "point_bonus", "cash_bonus": [{"currency_type", "amount"}], "status"}``."""
        return cls(
            account_id=str(item["account_id"]),
            point_bonus=int(item.get("point_bonus", 0)),
            cash_bonus={
                str(c["currency_type"]): Decimal(str(c["amount"])).quantize(_CENT) for c in item.get("cash_bonus", [])
            },
            enabled=item.get("status", "enabled") in ("enabled", 1),
        )

    def assets(self) -> dict[str, Any]:
        return {
            "point_bonus": self.point_bonus,
            "cash_bonus": [{"currency_type": k, "amount": v} for k, v in sorted(self.cash_bonus.items())],
        }


@dataclass
class Fault:
    """The next ``times`` requests to ``endpoint`` (one of :data:`ENDPOINTS`) go wrong in the way ``kind`` names.

    ``seconds`` is the delay of ``slow`` and the ``x-ogw-ratelimit-reset`` of ``rate_limit``
    and of a 429 ``html_page``. ``status`` is the HTTP status of ``rate_limit`` (429; older
    Feishu APIs answered 400), of ``html_page`` (a gateway's HTML page, 502) and of the
    token error after ``revoke_token`` (400; Feishu has also answered 200).

    ``malformed_answer`` (withdraw only) commits the withdrawal as usual (balances zeroed,
    order remembered, ledger entry with the true amounts) and damages only the answer on
    the wire, the way ``variant`` names: ``null_amount`` (every cash ``amount`` is null),
    ``text_amount`` (every cash ``amount`` is ``"abc"``) or ``fractional_points``
    (``point_bonus`` is the true points plus 0.5). A variant that damages cash leaves an
    answer without cash intact. The stored order keeps the true data, so replaying the
    ``external_order_id`` later answers with the true details: the damage is one bad
    answer in transit, which is what a client that retries must survive. An error answer
    (say 1002555) passes through undamaged; the fault is used up all the same.

    ``busy`` and ``connection_limit`` (``ws_endpoint`` only) refuse the long connection's
    endpoint call with code 1 (system busy) or 1000040350 (too many connections), HTTP 200.

    The long connection's faults (``endpoint="events"`` only; ``"any"`` never reaches them)
    each take one delivery of an event (first or repeated) and compose:
    ``drop_connection`` cuts the connection without a close handshake right after the
    event's frames went out, so its acknowledgement cannot arrive and it is delivered
    again on the next connection; ``duplicate_event`` sends it twice (two message_ids,
    one event_id); ``split_event`` splits its payload into ``parts`` frames (``sum`` =
    parts, ``seq`` 0, 1, ...); ``ignore_ack`` takes an acknowledgement instead: it is
    counted, but the event is delivered again after ``redeliver_after`` as if unanswered;
    ``lose_event`` takes the next event raised (a credit's, a withdrawal's): Feishu never
    delivers it at all, as when an app was unsubscribed or gave up on retries.

    ``after`` lets that many matching calls (requests, deliveries or acknowledgements)
    pass untouched before the fault starts: ``drop_connection`` with ``after=2`` cuts the
    connection after the third event delivered from now on.
    """

    kind: str
    endpoint: str = "withdraw"
    times: int = 1
    seconds: float = 1.0
    status: int | None = None
    variant: str | None = None
    parts: int | None = None
    after: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {FAULT_KINDS}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"fault endpoint {self.endpoint!r} is not one of {ENDPOINTS}")
        if (self.kind in _EVENT_FAULTS) != (self.endpoint == "events"):
            raise ValueError(f"the long connection's faults are {_EVENT_FAULTS}, at endpoint 'events' only")
        if self.kind in _ENDPOINT_REFUSALS and self.endpoint != "ws_endpoint":
            raise ValueError(f"{self.kind!r} refuses the ws_endpoint only, not {self.endpoint!r}")
        if isinstance(self.after, bool) or not isinstance(self.after, int) or self.after < 0:
            raise ValueError(f"after must be a whole number, at least 0, not {self.after!r}")
        if self.kind == "split_event":
            self.parts = 2 if self.parts is None else self.parts
            if isinstance(self.parts, bool) or not isinstance(self.parts, int) or self.parts < 2:
                raise ValueError(f"split_event parts must be a whole number, at least 2, not {self.parts!r}")
        elif self.parts is not None:
            raise ValueError(f"parts is for split_event only, not for {self.kind!r}")
        # Over HTTP a delay can arrive as a Decimal (control bodies keep numbers exact); sleep wants a float.
        self.seconds = float(self.seconds)
        if self.kind != "malformed_answer":
            if self.variant is not None:
                raise ValueError(f"variant is for malformed_answer only, not for {self.kind!r}")
            return
        if self.endpoint != "withdraw":  # only a withdrawal answer carries amounts to damage
            raise ValueError(f"malformed_answer applies to the withdraw endpoint only, not {self.endpoint!r}")
        if self.variant not in MALFORMED_VARIANTS:
            raise ValueError(f"malformed_answer variant {self.variant!r} is not one of {MALFORMED_VARIANTS}")


def demo_accounts() -> list[Account]:
    text = resources.files(__package__).joinpath("demo_accounts.json").read_text()
    return [Account.from_json(item) for item in json.loads(text)["accounts"]]


class _Window:
    """At most ``limit`` accepted calls in any ``period`` seconds (a sliding log, the strictest reading)."""

    def __init__(self, limit: int, period: float) -> None:
        self.limit, self.period = limit, period
        self.calls: deque[float] = deque()

    def admit(self, now: float) -> float | None:
        """None if the call may go ahead; else the seconds until it could."""
        while self.calls and self.calls[0] <= now - self.period:
            self.calls.popleft()
        if len(self.calls) >= self.limit:
            return self.calls[0] + self.period - now
        self.calls.append(now)
        return None


class FeishuSandbox:
    """Start with ``with FeishuSandbox() as sandbox:`` and point a connection at ``sandbox.url``.

    Rate limits are (calls, seconds) per endpoint, Feishu's published ones by default
    (enable's 10 a second is unconfirmed); ``rate_limits=False`` lifts them for fast tests.
    Token endpoints are never limited. ``requests`` counts, per endpoint, the calls that
    were authorized and well formed (refusals such as 1002553 included; token endpoints:
    the tokens issued and tickets resent) and the calls refused with a 429; a counter appears there once it counts,
    while ``state()["requests"]`` always lists all of :data:`COUNTERS`.

    ``app_type`` says whose credentials ``app_id``/``app_secret`` are: a custom
    (self-built) app's, which gets tenant tokens from ``/tenant_access_token/internal``,
    or a store app's (``"isv"``), which gets them in three steps (the app_ticket, an
    app_access_token, then a tenant_access_token for ``tenant_key``); each app type's
    endpoints refuse the other type with HTTP 400, code 10003. The sandbox always holds
    one current app_ticket (:attr:`app_ticket`); resending or :meth:`rotate_app_ticket`
    replaces it, and only the latest one is valid.

    Switches for what Feishu's docs leave open, the first value the default:

    - ``empty_withdrawal``: withdrawing when every chosen kind is zero either succeeds with
      zeros and records an order (``"zeros"``) or is refused with HTTP 400, code 1002556,
      recording nothing, so the same ``external_order_id`` withdraws for real once money
      arrives (``"error"``).
    - ``replay_after_deactivate``: a repeated ``external_order_id`` whose account has been
      deactivated since answers with the original details (``"original"``) or with
      1002555 (``"error"``).
    - ``reregister``: registering a mobile number or email that already has an account
      answers that account as it stands now, balance and status included (``"existing"``),
      or is refused with HTTP 400, code 1002557 (``"error"``). A mobile number and an
      email are different referrers, even for one person.
    - ``reconcile_end``: whether a withdrawal whose ``trans_time`` equals the window's
      ``end_trans_time`` is in the window (``"inclusive"``) or not (``"exclusive"``); the
      start is always inclusive.
    - ``repeat_status_change``: deactivating a deactivated account or enabling an enabled
      one answers the account unchanged (``"idempotent"``), or is refused with HTTP 400:
      1002555 for a second deactivation, 1002002 for a second enabling (``"error"``; the
      codes are the documented ones nearest in meaning, Feishu's own are unknown).
      ``deactivate``/``enable`` in Python and ``/_sandbox/...`` are an admin's hand and
      always idempotent.

    Events over the long connection (a custom app's; a store app's endpoint call is
    refused with code 403, as Feishu offers the long connection to self-built apps).
    ``ws_port`` is its port (0: a free one; :attr:`ws_url` tells), ``redeliver_after`` the
    seconds before an unacknowledged event goes out again (Feishu's own delay is
    unconfirmed), ``client_config`` overrides ClientConfig fields, and
    ``verification_token`` is what every event's ``header.token`` carries.

    - ``POST /callback/ws/endpoint`` with ``{"AppID", "AppSecret"}`` answers
      ``{"code": 0, "data": {"URL": "ws://127.0.0.1:<ws_port>/ws?device_id=...&service_id=...",
      "ClientConfig": {"ReconnectCount", "ReconnectInterval", "ReconnectNonce",
      "PingInterval"}}}`` (seconds; ``client_config`` sets them, default the SDK's
      -1/120/30/120); wrong credentials answer code 514. A WebSocket handshake with a
      device_id/service_id pair the endpoint never handed out is refused with HTTP 403 and
      headers ``handshake-status: 514``, ``handshake-msg``, ``handshake-autherrcode``, so
      only this app's connections get its events.
    - Every balance change raises ``hire.referral_account.assets_update_v1``: a credit
      (:meth:`credit`, ``/_sandbox/credit``) and a withdrawal that moved money (with the new,
      possibly zero, balance); the event carries ``account_id``, ``assets.confirmed_bonus``
      as ``get_account_assets`` shows it (amounts bare JSON numbers, ``100.50``) and
      ``modify_time`` (ms string); its header has ``event_id``, ``event_type``,
      ``create_time``, ``app_id``, ``tenant_key`` and ``token`` (``verification_token``).
      :meth:`emit_event` (``/_sandbox/events/emit``) raises any other event, by default an
      ``im.message.receive_v1`` a payout client must ignore.
    - Each event goes to one connected client (round robin), or waits for the next
      client to connect. Until a data frame comes back with its ``message_id`` and payload
      ``{"code": 200}``, it is delivered again ``redeliver_after`` seconds after each
      delivery, and at once on another connection when the one carrying it ends. Every
      delivery has a new ``message_id``; the ``event_id`` stays.
    - A ``ping`` control frame gets a ``pong``; the pong carries the ClientConfig as JSON
      when :meth:`configure_client` (``/_sandbox/events/client_config``) changed it since
      that client last heard it, and no payload otherwise.
    - Faults (:meth:`inject`, ``/_sandbox/faults``): ``busy``/``connection_limit`` at
      ``ws_endpoint``; ``drop_connection``, ``duplicate_event``, ``split_event`` (``parts``)
      and ``ignore_ack`` at ``events`` (see :class:`Fault`); :meth:`drop_connections`
      (``/_sandbox/events/drop``) cuts every connection now.
    - ``state()["events"]`` holds, per event_id, ``event_type``, ``delivered`` (deliveries
      sent; a duplicated one counts twice), ``acked`` (no longer delivered) and ``acks``
      (``{"code": 200}`` answers, ignored ones included); ``state()["long_connection"]``
      counts ``endpoints`` handed out, ``connections`` opened, ``connected`` now,
      ``pings``, ``bad_frames`` (undecodable frames, which are ignored) and
      ``unknown_acks``, and shows the current ``client_config``.
    """

    def __init__(
        self,
        accounts: Iterable[Account] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        app_id: str = DEFAULT_APP_ID,
        app_secret: str = DEFAULT_APP_SECRET,
        scopes: Iterable[str] = (REFERRAL_SCOPE,),
        rate_limits: bool = True,
        withdraw_limit: tuple[int, float] = (100, 60.0),
        assets_limit: tuple[int, float] = (10, 1.0),
        register_limit: tuple[int, float] = (100, 60.0),
        deactivate_limit: tuple[int, float] = (100, 60.0),
        enable_limit: tuple[int, float] = (10, 1.0),
        reconciliation_limit: tuple[int, float] = (100, 60.0),
        token_lifetime: int = TOKEN_LIFETIME,
        tls: tuple[str, str] | None = None,
        empty_withdrawal: EmptyWithdrawal = "zeros",
        replay_after_deactivate: ReplayAfterDeactivate = "original",
        reregister: Reregister = "existing",
        reconcile_end: ReconcileEnd = "inclusive",
        repeat_status_change: RepeatStatusChange = "idempotent",
        app_type: AppType = "custom",
        tenant_key: str = DEFAULT_TENANT_KEY,
        ws_port: int = 0,
        redeliver_after: float = 5.0,
        client_config: Mapping[str, int] | None = None,
        verification_token: str = DEFAULT_VERIFICATION_TOKEN,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the sandbox binds to loopback only, not {host!r}")
        for name, value, modes in (
            ("empty_withdrawal", empty_withdrawal, EMPTY_WITHDRAWAL_MODES),
            ("replay_after_deactivate", replay_after_deactivate, REPLAY_AFTER_DEACTIVATE_MODES),
            ("reregister", reregister, REREGISTER_MODES),
            ("reconcile_end", reconcile_end, RECONCILE_END_MODES),
            ("repeat_status_change", repeat_status_change, REPEAT_STATUS_CHANGE_MODES),
            ("app_type", app_type, APP_TYPES),
        ):
            if value not in modes:
                raise ValueError(f"{name} {value!r} is not one of {modes}")
        if not isinstance(tenant_key, str) or not tenant_key:
            raise ValueError(f"tenant_key must be a non-empty string, not {tenant_key!r}")
        if isinstance(redeliver_after, bool) or not isinstance(redeliver_after, int | float) or redeliver_after <= 0:
            raise ValueError(f"redeliver_after must be a number of seconds above 0, not {redeliver_after!r}")
        self.empty_withdrawal = empty_withdrawal
        self.replay_after_deactivate = replay_after_deactivate
        self.reregister = reregister
        self.reconcile_end = reconcile_end
        self.repeat_status_change = repeat_status_change
        self.app_type = app_type
        self.tenant_key = tenant_key
        self.app_id, self.app_secret = app_id, app_secret
        self.scopes = set(scopes)
        self.token_lifetime = token_lifetime
        self.issued_tokens: list[str] = []  # tenant_access_tokens, whichever app type asked
        self.issued_app_tokens: list[str] = []  # a store app's app_access_tokens
        # Copies: the caller's accounts keep their balances, so tests can compare against them.
        self.accounts = {
            a.account_id: replace(a, cash_bonus=dict(a.cash_bonus))
            for a in (demo_accounts() if accounts is None else accounts)
        }
        self.orders: dict[str, dict[str, Any]] = {}
        self._order_accounts: dict[str, str] = {}  # external_order_id -> the account it drained
        self._registrations: dict[tuple[str, ...], str] = {}  # ("mobile", code, number) or ("email", ...) -> id
        self.ledger: list[dict[str, Any]] = []
        self.requests: dict[str, int] = _Counts(token=0, withdraw=0, assets=0, rate_limited=0)
        self.faults: list[Fault] = []
        self._tokens: dict[str, float] = {}
        self._app_tokens: dict[str, float] = {}
        self._app_ticket = _new_ticket()
        limits = {
            "withdraw": withdraw_limit,
            "assets": assets_limit,
            "register": register_limit,
            "deactivate": deactivate_limit,
            "enable": enable_limit,
            "reconciliation": reconciliation_limit,
        }
        self._limits = {name: _Window(*limit) for name, limit in limits.items()} if rate_limits else {}
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls:  # (certificate file, key file): https on loopback, e.g. to measure TLS handshakes
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake happens in each connection's own thread, not in the accept loop.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self._server.sandbox = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self.verification_token = verification_token
        self.long_connection = LongConnection(
            host,
            ws_port,
            lock=self.lock,
            take_fault=self.take_fault,
            redeliver_after=redeliver_after,
            client_config=DEFAULT_CLIENT_CONFIG,
        )
        if client_config:
            self.long_connection.configure(client_config)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"{self.scheme}://[{host}]:{port}" if ":" in host else f"{self.scheme}://{host}:{port}"

    @property
    def ws_url(self) -> str:
        """Where the long connection listens (``ws://host:port``); clients learn the full URL from the endpoint."""
        return self.long_connection.base_url

    def start(self) -> FeishuSandbox:
        self.long_connection.start()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="feishu-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.long_connection.start()
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop a sandbox started with :meth:`start`."""
        self._server.shutdown()
        self.close()

    def close(self) -> None:
        self.long_connection.stop()
        self._server.server_close()

    def __enter__(self) -> FeishuSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- controls that only the sandbox has ------------------------------------------------

    def inject(self, kind: str, *, endpoint: str = "withdraw", times: int = 1, **options: Any) -> None:
        with self.lock:
            self.faults.append(Fault(kind, endpoint, times, **options))

    def revoke_tokens(self, *, app_tokens: bool = False) -> None:
        """Invalidate every tenant_access_token, and with ``app_tokens`` every app_access_token too."""
        with self.lock:
            self._tokens.clear()
            if app_tokens:
                self._app_tokens.clear()

    @property
    def app_ticket(self) -> str:
        """The current app_ticket, which Feishu would push to a store app in the ``app_ticket`` event."""
        with self.lock:
            return self._app_ticket

    def rotate_app_ticket(self) -> str:
        """Issue a new app_ticket, as Feishu's hourly push does; the previous one stops working. Returns it."""
        with self.lock:
            self._app_ticket = _new_ticket()
            return self._app_ticket

    def register(self, *, mobile: Mapping[str, str] | None = None, email: str | None = None) -> dict[str, Any]:
        """Register a referrer as the API does (``mobile={"code": "86", "number": ...}`` or ``email``).

        Returns the account as the register endpoint answers it. Follows ``reregister``: a
        second registration returns the existing account, or raises :class:`ValueError`
        under ``"error"``; bad input raises :class:`ValueError` too. Counts no request.
        """
        body = {k: v for k, v in (("mobile", mobile), ("email", email)) if v is not None}
        key, referrer = _referrer_request(body)
        with self.lock:
            _, answer = self._register(key, referrer)
        if answer["code"] != 0:
            raise ValueError(answer["msg"])
        return dict(answer["data"]["account"])

    def credit(
        self,
        account_id: str,
        point_bonus: int = 0,
        cash_bonus: Mapping[str, Decimal | int | str] | None = None,
    ) -> dict[str, Any]:
        """Add to a balance, as a bonus being confirmed does mid-run; an unknown account is registered, enabled.

        Amounts are Decimal, int or numeric strings in whole cents; a float is refused,
        because 0.1 is not 0.10 and the tests compare money exactly. Returns the account
        as :meth:`state` shows it.
        """
        if not isinstance(account_id, str) or not account_id:
            raise ValueError("account_id must be a non-empty string")
        points = _points(point_bonus)
        cash = {_currency(currency): _money(amount) for currency, amount in (cash_bonus or {}).items()}
        with self.lock:  # everything is checked above: a bad credit changes nothing
            account = self.accounts.setdefault(account_id, Account(account_id))
            account.point_bonus += points
            for currency, amount in cash.items():
                if amount:
                    account.cash_bonus[currency] = account.cash_bonus.get(currency, Decimal("0.00")) + amount
            if points or any(cash.values()):
                self._assets_updated(account)
            return _snapshot(account)

    def emit_event(self, event_type: str = "im.message.receive_v1", event: Mapping[str, Any] | None = None) -> str:
        """Raise any event over the long connection (default: a chat message nobody paying out cares about).

        Returns its event_id. ``event`` is the envelope's ``event`` object; the default is
        a small text message for ``im.message.receive_v1`` and ``{}`` for other types.
        """
        if not isinstance(event_type, str) or not event_type:
            raise ValueError(f"event_type must be a non-empty string, not {event_type!r}")
        if event is None:
            event = _SAMPLE_MESSAGE if event_type == "im.message.receive_v1" else {}
        if not isinstance(event, Mapping):
            raise ValueError(f"event must be a JSON object, not {event!r}")
        with self.lock:
            return self._raise_event(event_type, event)

    def drop_connections(self) -> int:
        """Cut every long connection now, without a close handshake; returns how many were open."""
        return self.long_connection.drop_connections()

    def configure_client(self, **changes: int) -> dict[str, int]:
        """Change the ClientConfig (``PingInterval=1``, ...); later endpoint answers and pongs carry it."""
        return self.long_connection.configure(changes)

    def _assets_updated(self, account: Account) -> None:
        """Raise ``assets_update_v1`` for a balance that just changed (the caller holds the lock)."""
        event = {
            "account_id": account.account_id,
            "assets": {"confirmed_bonus": account.assets()},
            "modify_time": str(time.time_ns() // 1_000_000),
        }
        self._raise_event(ASSETS_UPDATE, event)

    def _raise_event(self, event_type: str, event: Mapping[str, Any]) -> str:
        event_id = secrets.token_hex(16)
        envelope = {
            "schema": "2.0",
            "header": {
                "event_id": event_id,
                "event_type": event_type,
                "create_time": str(time.time_ns() // 1_000_000),
                "token": self.verification_token,
                "app_id": self.app_id,
                "tenant_key": self.tenant_key,
            },
            "event": event,
        }
        if not self.take_fault("events", "lose_event"):
            self.long_connection.publish(event_id, event_type, _json_bytes(envelope))
        return event_id

    def deactivate(self, account_id: str) -> dict[str, Any]:
        """Stop an account, as an HR admin can between a DAG's retries; raises :class:`UnknownAccount`."""
        return self._set_enabled(account_id, False)

    def enable(self, account_id: str) -> dict[str, Any]:
        """Start a stopped account again; raises :class:`UnknownAccount`."""
        return self._set_enabled(account_id, True)

    def _set_enabled(self, account_id: str, enabled: bool) -> dict[str, Any]:
        with self.lock:
            account = self.accounts.get(account_id)
            if account is None:
                raise UnknownAccount(account_id)
            account.enabled = enabled
            return _snapshot(account)

    def state(self) -> dict[str, Any]:
        """Balances by account id, the ledger of withdrawals, every counter of :data:`COUNTERS`, and the events."""
        with self.lock:
            return {
                "accounts": {a.account_id: _snapshot(a) for a in self.accounts.values()},
                "ledger": list(self.ledger),
                "requests": {**dict.fromkeys(COUNTERS, 0), **self.requests},
                **self.long_connection.state(),
            }

    # -- the API ---------------------------------------------------------------------------

    def take_fault(self, endpoint: str, kind: str | None = None) -> Fault | None:
        """The fault for this call to ``endpoint`` (of ``kind``, if given), used up by one; None if none."""
        with self.lock:
            for fault in self.faults:
                if fault.endpoint == endpoint or (fault.endpoint == "any" and endpoint != "events"):
                    if kind is not None and fault.kind != kind:
                        continue
                    if fault.after:
                        fault.after -= 1
                        continue
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def throttle(self, endpoint: str) -> float | None:
        with self.lock:
            window = self._limits.get(endpoint)
            return window.admit(time.monotonic()) if window else None

    def issue_token(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """A custom app's ``tenant_access_token/internal``: ``{app_id, app_secret}``."""
        refused = self._check_app(body) or self._check_app_type("custom")
        if refused:
            return refused
        with self.lock:
            self.requests["token"] += 1
            token, expire = self._reuse_or_issue(self._tokens, self.issued_tokens, "t-")
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire}

    def resend_app_ticket(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """A store app's ``app_ticket/resend``: ``{app_id, app_secret}``; a new ticket replaces the old one."""
        refused = self._check_app(body) or self._check_app_type("isv")
        if refused:
            return refused
        with self.lock:
            self.requests["app_ticket"] += 1
            self._app_ticket = _new_ticket()
        return 200, {"code": 0, "msg": "ok"}

    def issue_app_token(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """A store app's ``app_access_token``: ``{app_id, app_secret, app_ticket}``; reused like tenant tokens."""
        refused = self._check_app(body) or self._check_app_type("isv")
        if refused:
            return refused
        ticket = body.get("app_ticket")
        if not isinstance(ticket, str) or not ticket:
            return 400, {"code": 10003, "msg": "invalid param: app_ticket is required"}
        with self.lock:
            if ticket != self._app_ticket:
                return 400, {"code": 10012, "msg": "app_ticket is invalid"}
            self.requests["app_token"] += 1
            token, expire = self._reuse_or_issue(self._app_tokens, self.issued_app_tokens, "a-")
        return 200, {"code": 0, "msg": "ok", "app_access_token": token, "expire": expire}

    def issue_isv_tenant_token(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """A store app's ``tenant_access_token``: ``{app_access_token, tenant_key}``.

        An unknown or expired app_access_token is refused with 99991664 (the documented
        "token invalid" family: fetch a new app_access_token and try again), an unknown
        tenant_key with 10003.
        """
        refused = self._check_app_type("isv")
        if refused:
            return refused
        app_token, tenant_key = body.get("app_access_token"), body.get("tenant_key")
        if not isinstance(app_token, str) or not app_token or not isinstance(tenant_key, str) or not tenant_key:
            return 400, {"code": 10003, "msg": "invalid param: app_access_token and tenant_key are required"}
        with self.lock:
            expires = self._app_tokens.get(app_token)
            if expires is None or expires <= time.time():
                return 400, {"code": 99991664, "msg": "Invalid app access token."}
            if tenant_key != self.tenant_key:
                return 400, {"code": 10003, "msg": "invalid param: the app is not installed in this tenant_key"}
            self.requests["token"] += 1
            token, expire = self._reuse_or_issue(self._tokens, self.issued_tokens, "t-")
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire}

    def issue_ws_endpoint(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /callback/ws/endpoint``: ``{"AppID", "AppSecret"}`` -> the long connection's URL and ClientConfig."""
        if body.get("AppID") != self.app_id or body.get("AppSecret") != self.app_secret:
            return 200, {"code": 514, "msg": "auth failed"}
        if self.app_type != "custom":
            return 200, {"code": 403, "msg": "forbidden: the long connection is for self-built apps"}
        return 200, {"code": 0, "msg": "ok", "data": self.long_connection.endpoint()}

    def _check_app(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if not isinstance(body.get("app_id"), str) or body.get("app_id") != self.app_id:
            return 400, {"code": 10003, "msg": "invalid param"}
        if body.get("app_secret") != self.app_secret:
            return 400, {"code": 10014, "msg": "app secret invalid"}
        return None

    def _check_app_type(self, wanted: str) -> tuple[int, dict[str, Any]] | None:
        if self.app_type == wanted:
            return None
        if wanted == "custom":
            hint = f"a store (isv) app's tenant_access_token comes from {_ISV_APP_TOKEN} and {_ISV_TENANT_TOKEN}"
        else:
            hint = f"a custom app's tenant_access_token comes from {_TOKEN}"
        return 400, {"code": 10003, "msg": f"invalid param: {hint}"}

    def _reuse_or_issue(self, pool: dict[str, float], issued: list[str], prefix: str) -> tuple[str, int]:
        """Feishu's rule: the same token while more than 30 minutes are left, else a new one (both stay valid)."""
        now = time.time()
        live = [(exp, tok) for tok, exp in pool.items() if exp - now > TOKEN_REUSE_WINDOW]
        if live:
            expires, token = max(live)
        else:
            token, expires = f"{prefix}{secrets.token_hex(20)}", now + self.token_lifetime
            pool[token] = expires
            issued.append(token)
        return token, int(expires - now)

    def authorize(self, header: str | None) -> tuple[int, dict[str, Any]] | None:
        if not header or not header.startswith("Bearer ") or not header[7:].strip():
            return 400, {"code": 99991661, "msg": "Missing access token for authorization."}
        token = header[7:].strip()
        if not token.startswith("t-"):
            return 400, {"code": 99991671, "msg": "Invalid access token prefix."}
        with self.lock:
            expires = self._tokens.get(token)
        if expires is None or expires <= time.time():
            return 400, {"code": 99991663, "msg": "Invalid access token for authorization."}
        if REFERRAL_SCOPE not in self.scopes:
            return 400, {
                "code": 99991672,
                "msg": f"Access denied. One of the following scopes is required: [{REFERRAL_SCOPE}].",
            }
        return None

    def withdraw(self, account_id: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        kinds = body.get("withdraw_bonus_type")
        order_id = body.get("external_order_id")
        if (
            not isinstance(kinds, list)
            or not kinds
            or any(k not in (1, 2) or isinstance(k, bool) for k in kinds)
            or not isinstance(order_id, str)
            or not order_id
        ):
            return 400, {"code": 1002002, "msg": "param error"}
        with self.lock:
            self.requests["withdraw"] += 1
            if order_id in self.orders:
                return self._replay(order_id)
            account = self.accounts.get(account_id)
            if account is None:
                return 400, {"code": 1002553, "msg": "referral account does not exist"}
            if not account.enabled:
                return _deactivated()
            points = account.point_bonus if 1 in kinds else 0
            # A currency at 0.00 is nothing to withdraw: it would make an empty withdrawal look non-empty.
            cash = [c for c in account.assets()["cash_bonus"] if c["amount"]] if 2 in kinds else []
            if not points and not cash and self.empty_withdrawal == "error":
                return 400, {"code": 1002556, "msg": "no balance to withdraw"}  # and the order id stays free
            if 1 in kinds:
                account.point_bonus = 0
            if 2 in kinds:
                account.cash_bonus = {}
            data = {
                "external_order_id": order_id,
                "trans_time": str(time.time_ns() // 1_000_000),
                "withdrawal_details": {"point_bonus": points, "cash_bonus": cash},
            }
            self.orders[order_id] = data
            self._order_accounts[order_id] = account_id
            self.ledger.append({"referral_account_id": account_id, **data})
            if points or cash:
                self._assets_updated(account)
        return 200, {"code": 0, "msg": "SUCCESS", "data": data}

    def _replay(self, order_id: str) -> tuple[int, dict[str, Any]]:
        """A repeated ``external_order_id`` moves no money; what it answers depends on ``replay_after_deactivate``."""
        account = self.accounts.get(self._order_accounts[order_id])
        if self.replay_after_deactivate == "error" and account is not None and not account.enabled:
            return _deactivated()
        return 200, {"code": 0, "msg": "SUCCESS", "data": self.orders[order_id]}

    def account_assets(self, account_id: str, user_id_type: str = "open_id") -> tuple[int, dict[str, Any]]:
        """The account with its ``referrer`` (registered accounts only), whose ``id`` is of ``user_id_type``."""
        with self.lock:
            self.requests["assets"] += 1
            account = self.accounts.get(account_id)
            if account is None:
                return _unknown_account()
            return _account_answer(account, user_id_type)

    def register_account(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /referral_account``: ``{"mobile": {"code", "number"}}`` or ``{"email"}``, exactly one."""
        try:
            key, referrer = _referrer_request(body)
        except ValueError as exc:
            return _param_error(exc)
        with self.lock:
            self.requests["register"] += 1
            return self._register(key, referrer)

    def _register(self, key: tuple[str, ...], referrer: Referrer) -> tuple[int, dict[str, Any]]:
        known = self._registrations.get(key)
        if known is not None:
            if self.reregister == "error":
                return 400, {"code": 1002557, "msg": "referral account already exists"}
            return _account_answer(self.accounts[known])
        account_id = _new_id19()
        while account_id in self.accounts:
            account_id = _new_id19()
        account = self.accounts[account_id] = Account(account_id, referrer=referrer)
        self._registrations[key] = account_id
        return _account_answer(account)

    def deactivate_account(self, account_id: str) -> tuple[int, dict[str, Any]]:
        """``POST /referral_account/{id}/deactivate`` (no body)."""
        with self.lock:
            self.requests["deactivate"] += 1
            account = self.accounts.get(account_id)
            if account is None:
                return _unknown_account()
            if not account.enabled and self.repeat_status_change == "error":
                return _deactivated()
            account.enabled = False
            return _account_answer(account)

    def enable_account(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /referral_account/enable``: ``{"referral_account_id"}``."""
        account_id = body.get("referral_account_id")
        if not isinstance(account_id, str) or not account_id:
            return _param_error("referral_account_id is required")
        with self.lock:
            self.requests["enable"] += 1
            account = self.accounts.get(account_id)
            if account is None:
                return _unknown_account()
            if account.enabled and self.repeat_status_change == "error":
                return _param_error("referral account is already enabled")
            account.enabled = True
            return _account_answer(account)

    def reconcile(self, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """``POST /referral_account/reconciliation``, answered from the sandbox's own ledger.

        For every account the caller names in ``trade_details`` and every account withdrawn
        in the window, the caller's point total (0 if omitted; an account named twice is
        summed) is compared with the points the sandbox withdrew with ``trans_time`` in the
        window; ``check_failed_list`` holds each disagreement, by account id. An account
        the sandbox does not know has withdrawn nothing. Cash is not compared.
        """
        try:
            start, end, claimed = _reconciliation_request(body)
        except ValueError as exc:
            return _param_error(exc)
        with self.lock:
            self.requests["reconciliation"] += 1
            withdrawn: dict[str, int] = {}
            for entry in self.ledger:
                at = int(entry["trans_time"])
                if start <= at and (at <= end if self.reconcile_end == "inclusive" else at < end):
                    account_id = entry["referral_account_id"]
                    withdrawn[account_id] = withdrawn.get(account_id, 0) + entry["withdrawal_details"]["point_bonus"]
        failed = [
            {
                "account_id": account_id,
                "total_withdraw_reward_info": {"point_bonus": withdrawn.get(account_id, 0)},
                "total_recharge_reward_info": {"point_bonus": claimed.get(account_id, 0)},
            }
            for account_id in sorted(claimed.keys() | withdrawn.keys())
            if withdrawn.get(account_id, 0) != claimed.get(account_id, 0)
        ]
        return 200, {"code": 0, "msg": "success", "data": {"check_failed_list": failed}}


def _deactivated() -> tuple[int, dict[str, Any]]:
    return 400, {"code": 1002555, "msg": "referral account is deactivated"}


def _unknown_account() -> tuple[int, dict[str, Any]]:
    return 400, {"code": 1002553, "msg": "referral account does not exist"}


def _param_error(reason: object) -> tuple[int, dict[str, Any]]:
    return 400, {"code": 1002002, "msg": f"param error: {reason}"}


def _account_answer(account: Account, user_id_type: str | None = None) -> tuple[int, dict[str, Any]]:
    """``data.account`` as every referral-account endpoint answers it; ``referrer`` only with a ``user_id_type``."""
    shown: dict[str, Any] = {
        "account_id": account.account_id,
        "assets": {"confirmed_bonus": account.assets()},
        "status": 1 if account.enabled else 2,
    }
    if user_id_type is not None and account.referrer is not None:
        shown["referrer"] = account.referrer.to_json(user_id_type)
    return 200, {"code": 0, "msg": "success", "data": {"account": shown}}


def _new_id19() -> str:
    """A 19-digit id like Feishu's (``6942778198054125570``)."""
    return str(7 * 10**18 + secrets.randbelow(10**18))


def _new_ticket() -> str:
    return secrets.token_urlsafe(24)


class _Counts(dict[str, int]):
    """Request counters: one not counted yet reads 0 (and is not added by reading)."""

    def __missing__(self, key: str) -> int:
        return 0


def _user_id_type(query: Mapping[str, list[str]]) -> str:
    value = query.get("user_id_type", ["open_id"])[0] or "open_id"
    if value not in USER_ID_TYPES:
        raise ValueError(f"user_id_type {value!r} is not one of {', '.join(USER_ID_TYPES)}")
    return value


def _referrer_request(body: Mapping[str, Any]) -> tuple[tuple[str, ...], Referrer]:
    """The register body's referrer: the key that makes a second registration "the same", and a new Referrer."""
    mobile, email = body.get("mobile"), body.get("email")
    if (mobile is None) == (email is None):
        raise ValueError("give mobile or email, exactly one of them")
    suffix: str
    if email is not None:
        if not isinstance(email, str) or not _EMAIL.fullmatch(email):
            raise ValueError(f"email {email!r} is not an email address")
        key: tuple[str, ...] = ("email", email.lower())
        suffix = email.split("@")[0]
        shown = {"email": email}
    else:
        code = mobile.get("code") if isinstance(mobile, dict) else None
        number = mobile.get("number") if isinstance(mobile, dict) else None
        code_match = _MOBILE_CODE.fullmatch(code) if isinstance(code, str) else None
        if code_match is None or not isinstance(number, str) or not _MOBILE_NUMBER.fullmatch(number):
            raise ValueError(f'mobile is {{"code": "86", "number": "<digits>"}}, not {mobile!r}')
        key = ("mobile", code_match.group(1), number)
        suffix = number[-4:]
        shown = {"mobile": f"+{code_match.group(1)}{number}"}
    ids = {
        "open_id": f"ou_{secrets.token_hex(16)}",
        "union_id": f"on_{secrets.token_hex(16)}",
        "user_id": secrets.token_hex(4),
        "people_admin_id": _new_id19(),
    }
    name = {"zh_cn": f"内推人 {suffix}", "en_us": f"Referrer {suffix}"}
    return key, Referrer(ids, name, **shown)


def _reconciliation_request(body: Mapping[str, Any]) -> tuple[int, int, dict[str, int]]:
    """``(start, end, points claimed per account)``; raises ValueError naming the bad field."""
    times = []
    for name in ("start_trans_time", "end_trans_time"):
        value = body.get(name)
        if not isinstance(value, str) or not _TRANS_TIME.fullmatch(value):
            raise ValueError(f"{name} must be milliseconds since the epoch as a digit string, not {value!r}")
        times.append(int(value))
    start, end = times
    if start > end:
        raise ValueError(f"start_trans_time {start} is after end_trans_time {end}")
    details = body.get("trade_details")
    if details is None:
        details = []
    if not isinstance(details, list):
        raise ValueError("trade_details must be a list")
    claimed: dict[str, int] = {}
    for item in details:
        account_id = item.get("account_id") if isinstance(item, dict) else None
        info = item.get("total_recharge_reward_info") if isinstance(item, dict) else None
        points = info.get("point_bonus") if isinstance(info, dict) else None
        if not isinstance(account_id, str) or not account_id:
            raise ValueError(f"trade_details item {item!r} has no account_id")
        if isinstance(points, bool) or not isinstance(points, int) or points < 0:
            raise ValueError(f"trade_details item {item!r} has no whole total_recharge_reward_info.point_bonus")
        claimed[account_id] = claimed.get(account_id, 0) + points
    return start, end, claimed


class UnknownAccount(KeyError):
    """No referral account has this id (Feishu's 1002553)."""


def _snapshot(account: Account) -> dict[str, Any]:
    return {**account.assets(), "status": 1 if account.enabled else 2}


def _points(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"point_bonus must be a whole number of points, at least 0, not {value!r}")
    return value


def _currency(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"currency_type must be a non-empty string, not {value!r}")
    return value


def _money(value: object) -> Decimal:
    """A cash amount, exact to the cent: Decimal, int or a numeric string, never a float (0.1 is not 0.10)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise ValueError(f"a cash amount must be a Decimal, an int or a numeric string, not {value!r}")
    try:
        amount = Decimal(value)
        cents = amount.quantize(_CENT)
    except (InvalidOperation, ValueError):
        raise ValueError(f"{value!r} is not a cash amount") from None
    if amount != cents or amount < 0:
        raise ValueError(f"a cash amount is whole cents, at least 0, not {value!r}")
    return cents


def _corrupt(data: Mapping[str, Any], variant: str) -> dict[str, Any]:
    """A damaged copy of a withdrawal's ``data``; the stored order and the ledger keep the true one."""
    details = data["withdrawal_details"]
    points = details["point_bonus"]
    cash = [dict(c) for c in details["cash_bonus"]]
    if variant == "fractional_points":
        points = Decimal(points) + Decimal("0.5")
    for item in cash:
        if variant == "null_amount":
            item["amount"] = None
        elif variant == "text_amount":
            item["amount"] = "abc"
    return {**data, "withdrawal_details": {"point_bonus": points, "cash_bonus": cash}}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _json_bytes(payload: Mapping[str, Any]) -> bytes:
    """JSON with money as bare two-place numbers (``100.50``), as Feishu sends it."""
    text = json.dumps(payload, ensure_ascii=False, default=lambda v: f"\x00{v}\x00")
    return _DECIMAL_MARK.sub(r"\1", text).encode()


def _control_account_id(body: Mapping[str, Any]) -> str:
    """The ``{"account_id": "..."}`` of ``/_sandbox/deactivate`` and ``/_sandbox/enable``."""
    account_id = body.get("account_id")
    if set(body) != {"account_id"} or not isinstance(account_id, str) or not account_id:
        raise ValueError(f'the body is {{"account_id": "<a non-empty string>"}}, not {dict(body)!r}')
    return account_id


def _control_credit(sandbox: FeishuSandbox, body: Mapping[str, Any]) -> dict[str, Any]:
    """``{"account_id", "point_bonus", "cash_bonus": [{"currency_type", "amount"}]}``, amounts strings or numbers."""
    unknown = set(body) - {"account_id", "point_bonus", "cash_bonus"}
    if unknown:  # a misspelt field would otherwise credit nothing, silently
        raise ValueError(f"unknown fields {sorted(unknown)}")
    items = body.get("cash_bonus", [])
    if not isinstance(items, list) or not all(
        isinstance(c, dict) and set(c) == {"currency_type", "amount"} for c in items
    ):
        raise ValueError('cash_bonus is a list of {"currency_type", "amount"}')
    cash: dict[str, Any] = {}
    for item in items:
        currency = _currency(item["currency_type"])
        if currency in cash:
            raise ValueError(f"currency {currency!r} is listed twice")
        cash[currency] = item["amount"]
    return sandbox.credit(body.get("account_id", ""), body.get("point_bonus", 0), cash)


def _control_faults(sandbox: FeishuSandbox, body: Mapping[str, Any]) -> None:
    sandbox.inject(**body)


def _control_revoke_tokens(sandbox: FeishuSandbox, body: Mapping[str, Any]) -> None:
    """No body, or ``{"app_tokens": true}`` to revoke a store app's app_access_tokens as well."""
    app_tokens = body.get("app_tokens", False)
    if set(body) - {"app_tokens"} or not isinstance(app_tokens, bool):
        raise ValueError(f'the body is empty or {{"app_tokens": true|false}}, not {dict(body)!r}')
    sandbox.revoke_tokens(app_tokens=app_tokens)


def _app_ticket(sandbox: FeishuSandbox) -> dict[str, str]:
    """What Feishu's ``app_ticket`` event would carry."""
    return {"app_id": sandbox.app_id, "app_ticket": sandbox.app_ticket}


def _control_emit(sandbox: FeishuSandbox, body: Mapping[str, Any]) -> dict[str, str]:
    """``{"event_type", "event"}``, both optional (default: an ``im.message.receive_v1`` chat message)."""
    unknown = set(body) - {"event_type", "event"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    return {"event_id": sandbox.emit_event(body.get("event_type", "im.message.receive_v1"), body.get("event"))}


def _control_rotate_app_ticket(sandbox: FeishuSandbox, body: Mapping[str, Any]) -> dict[str, str]:
    sandbox.rotate_app_ticket()
    return _app_ticket(sandbox)


_CONTROLS: dict[str, Callable[[FeishuSandbox, Mapping[str, Any]], Any]] = {
    "/_sandbox/faults": _control_faults,
    "/_sandbox/revoke_tokens": _control_revoke_tokens,
    "/_sandbox/credit": _control_credit,
    "/_sandbox/deactivate": lambda sandbox, body: sandbox.deactivate(_control_account_id(body)),
    "/_sandbox/enable": lambda sandbox, body: sandbox.enable(_control_account_id(body)),
    "/_sandbox/app_ticket/rotate": _control_rotate_app_ticket,
    "/_sandbox/events/emit": _control_emit,
    "/_sandbox/events/drop": lambda sandbox, body: {"dropped": sandbox.drop_connections()},
    "/_sandbox/events/client_config": lambda sandbox, body: sandbox.configure_client(**body),
}
_READ_CONTROLS: dict[str, Callable[[FeishuSandbox], Any]] = {
    "/_sandbox/state": FeishuSandbox.state,
    "/_sandbox/app_ticket": _app_ticket,
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like Feishu's gateway
    # Headers and body leave in two writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms a call on a keep-alive connection).
    disable_nagle_algorithm = True
    server_version = "FeishuSandbox"

    @property
    def sandbox(self) -> FeishuSandbox:
        return self.server.sandbox  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: request lines are noise in test output."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if url.path.startswith("/_sandbox/"):
            return self._control(method, url.path, raw)
        endpoint = self._endpoint(method, url.path)
        if endpoint is None:
            return self._reply(404, _NOT_FOUND)
        fault = self.sandbox.take_fault(endpoint)
        if fault and fault.kind == "http_500":
            return self._reply(500, {"code": 1002001, "msg": "system error"})
        if fault and fault.kind in _ENDPOINT_REFUSALS:
            code, msg = _ENDPOINT_REFUSALS[fault.kind]
            return self._reply(200, {"code": code, "msg": msg})
        status = fault.status or _DEFAULT_STATUS.get(fault.kind, 0) if fault else 0
        if fault and fault.kind == "html_page":
            page = f"<html><head><title>{status}</title></head><body><h1>{status} from the gateway</h1></body></html>"
            reset = {"x-ogw-ratelimit-reset": str(math.ceil(fault.seconds))} if status == 429 else {}
            return self._send(status, page.encode(), "text/html", reset)
        if fault and fault.kind == "rate_limit":
            return self._rate_limited(fault.seconds, status)
        if fault and fault.kind == "slow":
            time.sleep(fault.seconds)
        if fault and fault.kind == "revoke_token":
            self.sandbox.revoke_tokens()
        if endpoint not in _TOKEN_ENDPOINTS and (wait := self.sandbox.throttle(endpoint)) is not None:
            return self._rate_limited(wait)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self._reply(400, {"code": 1002002, "msg": "param error: body is not a JSON object"})
        answer_status, answer = self._answer(endpoint, url, body)
        if fault and fault.kind == "revoke_token" and answer.get("code") == 99991663:
            answer_status = status
        if fault and fault.kind == "drop_after_commit":
            self.close_connection = True  # committed; the caller never hears of it
            return None
        if fault and fault.kind == "malformed_answer" and fault.variant and answer.get("code") == 0:
            answer = {**answer, "data": _corrupt(answer["data"], fault.variant)}  # committed; only the wire lies
        return self._reply(answer_status, answer)

    def _endpoint(self, method: str, path: str) -> str | None:
        if (method, path) in _ROUTES:
            return _ROUTES[method, path]
        if method == "POST" and _WITHDRAW.match(path):
            return "withdraw"
        if method == "POST" and _DEACTIVATE.match(path):
            return "deactivate"
        return None

    def _answer(self, endpoint: str, url: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        sandbox = self.sandbox
        if endpoint == "token":
            return sandbox.issue_token(body) if url.path == _TOKEN else sandbox.issue_isv_tenant_token(body)
        if endpoint == "app_token":
            return sandbox.issue_app_token(body)
        if endpoint == "app_ticket":
            return sandbox.resend_app_ticket(body)
        if endpoint == "ws_endpoint":
            return sandbox.issue_ws_endpoint(body)
        denied = sandbox.authorize(self.headers.get("Authorization"))
        if denied:
            return denied
        if endpoint == "withdraw":
            return sandbox.withdraw(_WITHDRAW.match(url.path).group(1), body)  # type: ignore[union-attr]
        if endpoint == "reconciliation":
            return sandbox.reconcile(body)
        query = parse_qs(url.query)
        try:
            user_id_type = _user_id_type(query)
        except ValueError as exc:
            return _param_error(exc)
        if endpoint == "register":
            return sandbox.register_account(body)
        if endpoint == "deactivate":
            return sandbox.deactivate_account(_DEACTIVATE.match(url.path).group(1))  # type: ignore[union-attr]
        if endpoint == "enable":
            return sandbox.enable_account(body)
        account_id = query.get("referral_account_id", [""])[0]
        if not account_id:
            return _param_error("referral_account_id is required")
        return sandbox.account_assets(account_id, user_id_type)

    def _control(self, method: str, path: str, raw: bytes) -> None:
        read = _READ_CONTROLS.get(path) if method == "GET" else None
        if read is not None:
            return self._reply(200, {"code": 0, "msg": "ok", "data": read(self.sandbox)})
        action = _CONTROLS.get(path) if method == "POST" else None
        if action is None:
            return self._reply(404, _NOT_FOUND)
        try:
            body = json.loads(raw or b"{}", parse_float=Decimal)  # money in a credit stays exact
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            data = action(self.sandbox, body)
        except UnknownAccount as exc:
            return self._reply(400, {"code": 1002553, "msg": f"referral account {exc.args[0]!r} does not exist"})
        except (TypeError, ValueError) as exc:
            return self._reply(400, {"code": 1002002, "msg": str(exc)})
        return self._reply(200, {"code": 0, "msg": "ok", **({"data": data} if data is not None else {})})

    def _rate_limited(self, wait: float, status: int = 429) -> None:
        headers = {"x-ogw-ratelimit-reset": str(max(1, math.ceil(wait)))}
        with self.sandbox.lock:
            self.sandbox.requests["rate_limited"] += 1
        return self._reply(status, {"code": 99991400, "msg": "request trigger frequency limit"}, headers)

    def _reply(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self._send(status, _json_bytes(payload), "application/json; charset=utf-8", headers)

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Tt-Logid", time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(10).upper())
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the caller gave up (e.g. timed out on a slow answer)
