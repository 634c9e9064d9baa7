"""``python -m airflow_provider_feishu_hire.sandbox [--port 8765] [--accounts accounts.json]``; see ``--help``."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from airflow_provider_feishu_hire.sandbox.server import (
    APP_TYPES,
    DEFAULT_APP_ID,
    DEFAULT_APP_SECRET,
    DEFAULT_TENANT_KEY,
    EMPTY_WITHDRAWAL_MODES,
    RECONCILE_END_MODES,
    REPEAT_STATUS_CHANGE_MODES,
    REPLAY_AFTER_DEACTIVATE_MODES,
    REREGISTER_MODES,
    Account,
    FeishuSandbox,
    demo_accounts,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_provider_feishu_hire.sandbox",
        description="A local Feishu Hire for tests and demos: tokens (custom or store app), and referral "
        "accounts (register, deactivate, enable, withdraw, get_account_assets, reconciliation). "
        "Control endpoints (JSON bodies): "
        'POST /_sandbox/faults {"kind", "endpoint", "times", "seconds", "status", "variant", "parts", "after"}; '
        'POST /_sandbox/credit {"account_id", "point_bonus", "cash_bonus": [{"currency_type", "amount"}]}; '
        'POST /_sandbox/deactivate and POST /_sandbox/enable {"account_id"}; '
        'POST /_sandbox/revoke_tokens [{"app_tokens": true}]; '
        "GET /_sandbox/app_ticket (the store app's current app_ticket, as the app_ticket event carries it); "
        "POST /_sandbox/app_ticket/rotate (a new ticket; the old one stops working); GET /_sandbox/state. "
        'Events: POST /callback/ws/endpoint {"AppID", "AppSecret"} hands out the long connection\'s '
        "WebSocket URL, which carries hire.referral_account.assets_update_v1 on every balance change; "
        'POST /_sandbox/events/emit {"event_type", "event"}; POST /_sandbox/events/drop; '
        'POST /_sandbox/events/client_config {"PingInterval", ...}.',
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port (default 8765)")
    parser.add_argument(
        "--accounts",
        type=Path,
        help='JSON file {"accounts": [{"account_id", "point_bonus", "cash_bonus": '
        '[{"currency_type", "amount"}], "status"}]}; default: the built-in demo accounts',
    )
    parser.add_argument("--app-id", default=DEFAULT_APP_ID)
    parser.add_argument("--app-secret", default=DEFAULT_APP_SECRET)
    parser.add_argument(
        "--app-type",
        choices=APP_TYPES,
        default="custom",
        help="custom (default): a self-built app, tokens from /open-apis/auth/v3/tenant_access_token/internal; "
        "isv: a store app, tokens from app_ticket -> app_access_token -> tenant_access_token (the other "
        "type's token endpoints answer HTTP 400 code 10003)",
    )
    parser.add_argument(
        "--tenant-key",
        default=DEFAULT_TENANT_KEY,
        help=f"the tenant a store app is installed in (default {DEFAULT_TENANT_KEY})",
    )
    parser.add_argument("--tls-cert", help="serve https with this certificate (PEM); needs --tls-key")
    parser.add_argument("--tls-key", help="the certificate's private key (PEM)")
    parser.add_argument("--no-rate-limits", action="store_true", help="lift Feishu's published rate limits")
    parser.add_argument("--withdraw-per-minute", type=int, default=100)
    parser.add_argument("--assets-per-second", type=int, default=10)
    parser.add_argument("--register-per-minute", type=int, default=100)
    parser.add_argument("--deactivate-per-minute", type=int, default=100)
    parser.add_argument("--enable-per-second", type=int, default=10)
    parser.add_argument("--reconciliation-per-minute", type=int, default=100)
    parser.add_argument(
        "--empty-withdrawal",
        choices=EMPTY_WITHDRAWAL_MODES,
        default="zeros",
        help="withdrawing a zero balance: succeed with zeros and record the order (default), "
        "or refuse with HTTP 400 code 1002556 and record nothing",
    )
    parser.add_argument(
        "--replay-after-deactivate",
        choices=REPLAY_AFTER_DEACTIVATE_MODES,
        default="original",
        help="a repeated external_order_id whose account was deactivated since: answer the original "
        "details (default), or HTTP 400 code 1002555",
    )
    parser.add_argument(
        "--reregister",
        choices=REREGISTER_MODES,
        default="existing",
        help="registering a mobile or email that already has an account: answer that account (default), "
        "or HTTP 400 code 1002557",
    )
    parser.add_argument(
        "--reconcile-end",
        choices=RECONCILE_END_MODES,
        default="inclusive",
        help="whether a withdrawal at exactly end_trans_time is in a reconciliation window "
        "(inclusive, the default) or not (exclusive); the start is always inclusive",
    )
    parser.add_argument(
        "--repeat-status-change",
        choices=REPEAT_STATUS_CHANGE_MODES,
        default="idempotent",
        help="deactivating a deactivated account or enabling an enabled one: answer the account "
        "(idempotent, the default), or HTTP 400 code 1002555 / 1002002 (error)",
    )
    parser.add_argument(
        "--ws-port", type=int, default=0, help="the long connection's port (default 0: a free one, see the banner)"
    )
    parser.add_argument(
        "--redeliver-after",
        type=float,
        default=5.0,
        help="seconds after which an unacknowledged event is delivered again (default 5)",
    )
    args = parser.parse_args(argv)

    accounts = (
        [Account.from_json(item) for item in json.loads(args.accounts.read_text())["accounts"]]
        if args.accounts
        else demo_accounts()
    )
    try:
        sandbox = FeishuSandbox(
            accounts,
            host=args.host,
            port=args.port,
            app_id=args.app_id,
            app_secret=args.app_secret,
            rate_limits=not args.no_rate_limits,
            withdraw_limit=(args.withdraw_per_minute, 60.0),
            assets_limit=(args.assets_per_second, 1.0),
            register_limit=(args.register_per_minute, 60.0),
            deactivate_limit=(args.deactivate_per_minute, 60.0),
            enable_limit=(args.enable_per_second, 1.0),
            reconciliation_limit=(args.reconciliation_per_minute, 60.0),
            tls=(args.tls_cert, args.tls_key) if args.tls_cert else None,
            empty_withdrawal=args.empty_withdrawal,
            replay_after_deactivate=args.replay_after_deactivate,
            reregister=args.reregister,
            reconcile_end=args.reconcile_end,
            repeat_status_change=args.repeat_status_change,
            app_type=args.app_type,
            tenant_key=args.tenant_key,
            ws_port=args.ws_port,
            redeliver_after=args.redeliver_after,
        )
    except (ValueError, OSError) as exc:
        sys.exit(f"feishu sandbox: {exc}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = f"{args.app_type} app {args.app_id}" + (f", tenant_key {args.tenant_key}" if args.app_type == "isv" else "")
    print(
        f"Feishu sandbox on {sandbox.url} ({app}, {len(accounts)} accounts; long connection on {sandbox.ws_url})",
        flush=True,
    )
    try:
        sandbox.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        sandbox.close()


if __name__ == "__main__":
    main()
