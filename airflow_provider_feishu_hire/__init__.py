"""Apache Airflow provider for Feishu Hire (飞书招聘) referral accounts.

Kept empty of imports on purpose: Airflow imports provider packages while it parses
every DAG file, and the hook's HTTP stack is only needed when a task runs.
"""

__version__ = "0.1.0"
