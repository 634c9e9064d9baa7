"""Errors raised by the Feishu client. No Airflow here: the client core must import without it."""

from __future__ import annotations

from enum import Enum

# Codes after which asking again cannot succeed: the request, the account, the app's
# scopes, its allowlist or its quota must change first. Retrying them only burns quota.
PERMANENT_CODES = frozenset(
    {
        1002002,  # parameter error
        1002553,  # referral account does not exist
        1002555,  # referral account deactivated
        99991661,  # no or malformed Authorization header
        99991671,  # token with the wrong prefix
        99991672,  # app lacks a scope (hire:referral_account)
        99991401,  # caller IP not on the allowlist
        99991403,  # monthly quota used up
        10003,  # token endpoint: invalid app_id
        10014,  # token endpoint: invalid app_secret
    }
)
# Feishu said "try later": a system error or its rate limiter.
TRANSIENT_CODES = frozenset({1002001, 99991400})
# The tenant_access_token was revoked or expired: fetch a new one and replay once.
TOKEN_CODES = frozenset({99991663, 99991664, 99991665})
RATE_LIMIT_CODE = 99991400
SCOPE_CODE = 99991672
# A store (isv) app's app_ticket is invalid or stale: Feishu must push a new one first.
APP_TICKET_CODE = 10012


class Reach(str, Enum):
    """How far a failed call got: the one fact about it the payout ledger needs, decided here and nowhere else.

    "Unknown" means Feishu may have acted: no answer came (a timeout, a dropped connection,
    a 5xx, a system error). A call retries inside itself, so a refusal can follow an
    attempt that got no answer: then it proves nothing about that attempt.
    """

    NOT_SENT = "never reached the endpoint"  # its token could not be had, or the gateway turned it away
    NOT_SENT_AFTER_UNKNOWN = "never reached the endpoint, after an attempt with no answer"
    REFUSED = "refused by the endpoint"
    REFUSED_AFTER_UNKNOWN = "refused by the endpoint, after an attempt with no answer"
    UNKNOWN = "no answer: Feishu may have acted"

    @property
    def reached_endpoint(self) -> bool:
        """This attempt got to the endpoint (or may have): its answer speaks for the call."""
        return self in (Reach.REFUSED, Reach.REFUSED_AFTER_UNKNOWN, Reach.UNKNOWN)

    @property
    def may_have_acted(self) -> bool:
        """Some attempt of the call may have been acted on by Feishu."""
        return self in (Reach.NOT_SENT_AFTER_UNKNOWN, Reach.REFUSED_AFTER_UNKNOWN, Reach.UNKNOWN)

    def after(self, earlier: Reach) -> Reach:
        """This attempt's reach, given how far the call's earlier attempts got."""
        if not earlier.may_have_acted or self.may_have_acted:
            return self
        return Reach.REFUSED_AFTER_UNKNOWN if self.reached_endpoint else Reach.NOT_SENT_AFTER_UNKNOWN


class FeishuAPIError(Exception):
    """A Feishu call that did not succeed.

    ``code`` and ``msg`` come from Feishu's envelope (``None`` when no envelope arrived:
    a dropped connection, a timeout, an HTML page from a gateway). ``log_id`` is the
    ``X-Tt-Logid`` to quote to Feishu support. ``retryable`` says whether the same call
    may succeed later; the client decides it once, so callers never re-derive it.
    ``reach`` says how far the call got (:class:`Reach`): whether Feishu may have acted on
    it, and whether this refusal came from the endpoint at all (a wrong secret, a stale
    ``app_ticket``, the gateway's rate limit or token check come before it).
    The message never carries the App Secret or a token: only what Feishu sent back
    and the resource we were working on.
    """

    def __init__(
        self,
        msg: str,
        *,
        code: int | None = None,
        log_id: str | None = None,
        http_status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        context: str | None = None,
        reach: Reach | None = None,
    ) -> None:
        self.code = code
        self.msg = msg
        self.log_id = log_id
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after
        self.context = context
        self.reach = self._own_reach() if reach is None else reach
        super().__init__(self._describe())

    @property
    def is_token_error(self) -> bool:
        return self.code in TOKEN_CODES

    @property
    def is_rate_limited(self) -> bool:
        return self.code == RATE_LIMIT_CODE or self.http_status == 429

    def _own_reach(self) -> Reach:
        """This attempt alone: the gateway's refusals never reached the endpoint; a retryable failure may have."""
        if self.is_rate_limited or self.is_token_error:
            return Reach.NOT_SENT
        return Reach.UNKNOWN if self.retryable else Reach.REFUSED

    def _describe(self) -> str:
        head = f"Feishu error {self.code}: {self.msg}" if self.code is not None else f"Feishu call failed: {self.msg}"
        facts = []
        if self.http_status is not None:
            facts.append(f"HTTP {self.http_status}")
        if self.log_id:
            facts.append(f"log_id {self.log_id}")
        facts.append("retryable" if self.retryable else "permanent")
        text = f"{head} ({', '.join(facts)})"
        return f"{text} while {self.context}" if self.context else text

    def with_context(self, context: str, *, earlier: Reach = Reach.NOT_SENT, sent: bool = True) -> FeishuAPIError:
        """Name what we were doing (e.g. the account id) without losing Feishu's facts.

        ``earlier``: how far the call's earlier attempts got; ``sent`` false: this attempt
        never left (its token could not be had), whatever the token endpoint answered.
        """
        return FeishuAPIError(
            self.msg,
            code=self.code,
            log_id=self.log_id,
            http_status=self.http_status,
            retryable=self.retryable,
            retry_after=self.retry_after,
            context=context,
            reach=(self.reach if sent else Reach.NOT_SENT).after(earlier),
        )
