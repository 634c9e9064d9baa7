"""A local Feishu for tests and demos: tokens, referral accounts, real balances, idempotency, faults.

It follows the public API reference (envelopes, codes with their HTTP statuses,
``X-Tt-Logid``, rate-limit headers) and deliberately shares no code with the client, so
that the client's tests are tests against the API's shape, not against itself.
It binds to loopback only.

Where Feishu's documentation is silent (withdrawing an empty balance, replaying an order
whose account was deactivated since), the sandbox offers each plausible behaviour behind
a switch, so the client can be tested against all of them rather than against a guess.
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

DEFAULT_APP_ID = "cli_sandbox_app"
DEFAULT_APP_SECRET = "sandbox-app-secret-not-for-production"
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
)
MALFORMED_VARIANTS = ("null_amount", "text_amount", "fractional_points")
_DEFAULT_STATUS = {"rate_limit": 429, "html_page": 502, "revoke_token": 400}
ENDPOINTS = ("token", "withdraw", "assets", "any")
EmptyWithdrawal = Literal["zeros", "error"]
ReplayAfterDeactivate = Literal["original", "error"]
EMPTY_WITHDRAWAL_MODES: tuple[str, ...] = get_args(EmptyWithdrawal)
REPLAY_AFTER_DEACTIVATE_MODES: tuple[str, ...] = get_args(ReplayAfterDeactivate)

_WITHDRAW = re.compile(r"^/open-apis/hire/v1/referral_account/([^/]+)/withdraw$")
_ASSETS = "/open-apis/hire/v1/referral_account/get_account_assets"
_TOKEN = "/open-apis/auth/v3/tenant_access_token/internal"
_CENT = Decimal("0.01")
_DECIMAL_MARK = re.compile(r'"\\u0000(-?[0-9.]+)\\u0000"')
_NOT_FOUND = {"code": 404, "msg": "404 page not found"}


@dataclass
class Account:
    account_id: str
    point_bonus: int = 0
    cash_bonus: dict[str, Decimal] = field(default_factory=dict)
    enabled: bool = True

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
    """The next ``times`` requests to ``endpoint`` go wrong in the way ``kind`` names.

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
    """

    kind: str
    endpoint: str = "withdraw"
    times: int = 1
    seconds: float = 1.0
    status: int | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {self.kind!r} is not one of {FAULT_KINDS}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"fault endpoint {self.endpoint!r} is not one of {ENDPOINTS}")
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

    Rate limits are (calls, seconds) per endpoint, Feishu's published ones by default;
    ``rate_limits=False`` lifts them for fast tests.

    Two switches cover what Feishu's docs leave open. ``empty_withdrawal``: withdrawing
    when every chosen kind is zero either succeeds with zeros and records an order
    (``"zeros"``) or is refused with HTTP 400, code 1002556, recording nothing, so the
    same ``external_order_id`` withdraws for real once money arrives (``"error"``).
    ``replay_after_deactivate``: a repeated ``external_order_id`` whose account has been
    deactivated since answers with the original details (``"original"``) or with
    1002555 (``"error"``).
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
        token_lifetime: int = TOKEN_LIFETIME,
        tls: tuple[str, str] | None = None,
        empty_withdrawal: EmptyWithdrawal = "zeros",
        replay_after_deactivate: ReplayAfterDeactivate = "original",
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"the sandbox binds to loopback only, not {host!r}")
        if empty_withdrawal not in EMPTY_WITHDRAWAL_MODES:
            raise ValueError(f"empty_withdrawal {empty_withdrawal!r} is not one of {EMPTY_WITHDRAWAL_MODES}")
        if replay_after_deactivate not in REPLAY_AFTER_DEACTIVATE_MODES:
            raise ValueError(
                f"replay_after_deactivate {replay_after_deactivate!r} is not one of {REPLAY_AFTER_DEACTIVATE_MODES}"
            )
        self.empty_withdrawal = empty_withdrawal
        self.replay_after_deactivate = replay_after_deactivate
        self.app_id, self.app_secret = app_id, app_secret
        self.scopes = set(scopes)
        self.token_lifetime = token_lifetime
        self.issued_tokens: list[str] = []
        # Copies: the caller's accounts keep their balances, so tests can compare against them.
        self.accounts = {
            a.account_id: replace(a, cash_bonus=dict(a.cash_bonus))
            for a in (demo_accounts() if accounts is None else accounts)
        }
        self.orders: dict[str, dict[str, Any]] = {}
        self._order_accounts: dict[str, str] = {}  # external_order_id -> the account it drained
        self.ledger: list[dict[str, Any]] = []
        self.requests: dict[str, int] = {"token": 0, "withdraw": 0, "assets": 0, "rate_limited": 0}
        self.faults: list[Fault] = []
        self._tokens: dict[str, float] = {}
        self._limits = {"withdraw": _Window(*withdraw_limit), "assets": _Window(*assets_limit)} if rate_limits else {}
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

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"{self.scheme}://[{host}]:{port}" if ":" in host else f"{self.scheme}://{host}:{port}"

    def start(self) -> FeishuSandbox:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="feishu-sandbox",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop a sandbox started with :meth:`start`."""
        self._server.shutdown()
        self.close()

    def close(self) -> None:
        self._server.server_close()

    def __enter__(self) -> FeishuSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- controls that only the sandbox has ------------------------------------------------

    def inject(self, kind: str, *, endpoint: str = "withdraw", times: int = 1, **options: Any) -> None:
        with self.lock:
            self.faults.append(Fault(kind, endpoint, times, **options))

    def revoke_tokens(self) -> None:
        with self.lock:
            self._tokens.clear()

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
            return _snapshot(account)

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
        with self.lock:
            return {
                "accounts": {a.account_id: _snapshot(a) for a in self.accounts.values()},
                "ledger": list(self.ledger),
                "requests": dict(self.requests),
            }

    # -- the API ---------------------------------------------------------------------------

    def take_fault(self, endpoint: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.endpoint in (endpoint, "any"):
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
        if not isinstance(body.get("app_id"), str) or body.get("app_id") != self.app_id:
            return 400, {"code": 10003, "msg": "invalid param"}
        if body.get("app_secret") != self.app_secret:
            return 400, {"code": 10014, "msg": "app secret invalid"}
        with self.lock:
            self.requests["token"] += 1
            now = time.time()
            live = [(exp, tok) for tok, exp in self._tokens.items() if exp - now > TOKEN_REUSE_WINDOW]
            if live:
                expires, token = max(live)
            else:
                token, expires = f"t-{secrets.token_hex(20)}", now + self.token_lifetime
                self._tokens[token] = expires
                self.issued_tokens.append(token)
        return 200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": int(expires - now)}

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
        return 200, {"code": 0, "msg": "SUCCESS", "data": data}

    def _replay(self, order_id: str) -> tuple[int, dict[str, Any]]:
        """A repeated ``external_order_id`` moves no money; what it answers depends on ``replay_after_deactivate``."""
        account = self.accounts.get(self._order_accounts[order_id])
        if self.replay_after_deactivate == "error" and account is not None and not account.enabled:
            return _deactivated()
        return 200, {"code": 0, "msg": "SUCCESS", "data": self.orders[order_id]}

    def account_assets(self, account_id: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.requests["assets"] += 1
            account = self.accounts.get(account_id)
            if account is None:
                return 400, {"code": 1002553, "msg": "referral account does not exist"}
            return 200, {
                "code": 0,
                "msg": "success",
                "data": {
                    "account": {
                        "account_id": account.account_id,
                        "assets": {"confirmed_bonus": account.assets()},
                        "status": 1 if account.enabled else 2,
                    }
                },
            }


def _deactivated() -> tuple[int, dict[str, Any]]:
    return 400, {"code": 1002555, "msg": "referral account is deactivated"}


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
    sandbox.revoke_tokens()


_CONTROLS: dict[str, Callable[[FeishuSandbox, Mapping[str, Any]], Any]] = {
    "/_sandbox/faults": _control_faults,
    "/_sandbox/revoke_tokens": _control_revoke_tokens,
    "/_sandbox/credit": _control_credit,
    "/_sandbox/deactivate": lambda sandbox, body: sandbox.deactivate(_control_account_id(body)),
    "/_sandbox/enable": lambda sandbox, body: sandbox.enable(_control_account_id(body)),
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
        if endpoint != "token" and (wait := self.sandbox.throttle(endpoint)) is not None:
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
        if method == "POST" and path == _TOKEN:
            return "token"
        if method == "POST" and _WITHDRAW.match(path):
            return "withdraw"
        if method == "GET" and path == _ASSETS:
            return "assets"
        return None

    def _answer(self, endpoint: str, url: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if endpoint == "token":
            return self.sandbox.issue_token(body)
        denied = self.sandbox.authorize(self.headers.get("Authorization"))
        if denied:
            return denied
        if endpoint == "withdraw":
            return self.sandbox.withdraw(_WITHDRAW.match(url.path).group(1), body)  # type: ignore[union-attr]
        account_id = parse_qs(url.query).get("referral_account_id", [""])[0]
        if not account_id:
            return 400, {"code": 1002002, "msg": "param error: referral_account_id is required"}
        return self.sandbox.account_assets(account_id)

    def _control(self, method: str, path: str, raw: bytes) -> None:
        if method == "GET" and path == "/_sandbox/state":
            return self._reply(200, {"code": 0, "msg": "ok", "data": self.sandbox.state()})
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
