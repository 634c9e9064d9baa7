"""The Feishu payouts console: the ledger, reviews, settlements, payroll batches and reconciliations in the Airflow UI.

``plugin.py`` is what Airflow imports (cheap: no FastAPI app is built until the first
request); ``app.py`` is the FastAPI app; ``queries.py`` the read queries the ledger class
does not offer, written against the ledger's tables.
"""
