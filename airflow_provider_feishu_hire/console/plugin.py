"""The Airflow plugin of the payouts console, registered through the provider's metadata (``plugins``).

Importing this module is cheap and cannot break Airflow's start-up: it imports only
``AirflowPlugin``. The FastAPI app (and FastAPI, the ledger, the hook) is built on the first
request that reaches ``/feishu-payouts``, and the ledger is opened then too: a missing or
unreachable ledger is a 503 on the console's pages, never an import error in the scheduler,
the api-server or a worker.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/feishu-payouts"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyConsoleApp:
    """An ASGI app that builds the console's FastAPI app on its first request."""

    def __init__(self) -> None:
        self._app: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None
        self._lock = threading.Lock()

    def _built(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        with self._lock:
            if self._app is None:
                from airflow_provider_feishu_hire.console.app import create_app

                self._app = create_app()
            return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # Starlette does not send lifespan to mounted apps; nothing to set up
            return
        await self._built()(scope, receive, send)


class FeishuPayoutsPlugin(AirflowPlugin):
    """A "Feishu payouts" entry in the Airflow UI's navigation, and the app behind it."""

    name = "feishu_hire_payouts"
    # Airflow reads these as class attributes of the plugin, as its own examples declare them.
    fastapi_apps = [{"app": LazyConsoleApp(), "url_prefix": URL_PREFIX, "name": "Feishu payouts"}]  # noqa: RUF012
    external_views = [  # noqa: RUF012
        {
            "name": "Feishu payouts",
            "href": f"{URL_PREFIX}/",
            "url_route": "feishu-payouts",
            "destination": "nav",
            "category": "browse",
        }
    ]
