"""Errors raised by the Feishu client. No Airflow here: the client core must import without it."""

from __future__ import annotations

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


class FeishuAPIError(Exception):
    """A Feishu call that did not succeed.

    ``code`` and ``msg`` come from Feishu's envelope (``None`` when no envelope arrived:
    a dropped connection, a timeout, an HTML page from a gateway). ``log_id`` is the
    ``X-Tt-Logid`` to quote to Feishu support. ``retryable`` says whether the same call
    may succeed later; the client decides it once, so callers never re-derive it.
    ``uncertain`` says an earlier attempt of the same call failed in a way that may have
    reached Feishu (a timeout, a dropped connection, a 5xx): a refusal now does not prove
    that nothing was committed before. ``sent`` is False when the call itself never left:
    its tenant token could not be had (a wrong secret, a stale ``app_ticket``), so the
    error says nothing about the endpoint.
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
        uncertain: bool = False,
        sent: bool = True,
    ) -> None:
        self.code = code
        self.msg = msg
        self.log_id = log_id
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after
        self.context = context
        self.uncertain = uncertain
        self.sent = sent
        super().__init__(self._describe())

    @property
    def is_token_error(self) -> bool:
        return self.code in TOKEN_CODES

    @property
    def is_rate_limited(self) -> bool:
        return self.code == RATE_LIMIT_CODE or self.http_status == 429

    @property
    def may_have_reached_feishu(self) -> bool:
        """A failure after which Feishu may have acted: not a refusal at its gateway or auth layer."""
        return self.retryable and not self.is_rate_limited and not self.is_token_error

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

    @property
    def reached_endpoint(self) -> bool:
        """Whether this error came from the endpoint called, or may have (no answer): not from the token
        fetch before it, nor from the gateway's rate limit or token check in front of it."""
        return self.sent and not self.is_rate_limited and not self.is_token_error

    def with_context(self, context: str, *, uncertain: bool = False, sent: bool = True) -> FeishuAPIError:
        """Name what we were doing (e.g. the account id) without losing Feishu's facts."""
        return FeishuAPIError(
            self.msg,
            code=self.code,
            log_id=self.log_id,
            http_status=self.http_status,
            retryable=self.retryable,
            retry_after=self.retry_after,
            context=context,
            uncertain=self.uncertain or uncertain,
            sent=self.sent and sent,
        )
