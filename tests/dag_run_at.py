"""Run a DAG like ``airflow dags test``, but with a fixed run id, so a second call re-runs the same DAG run.

``airflow dags test`` names every run after the current time. Running ``DAG.test`` with a
fixed ``run_after`` clears the existing run's task instances and runs them again under
the same run id: what a user's "Clear" of a whole run does. Used by tests/test_dags.py.

``python tests/dag_run_at.py DAG_ID ISO_TIME CONF_JSON``
"""

from __future__ import annotations

import json
import sys

import pendulum
from airflow.cli.commands.dag_command import get_bagged_dag


def main() -> None:
    dag_id, moment, conf = sys.argv[1], pendulum.parse(sys.argv[2]), json.loads(sys.argv[3])
    dag = get_bagged_dag(bundle_names=None, dag_id=dag_id)
    run = dag.test(run_after=moment, logical_date=moment, run_conf=conf)
    print(f"run_id={run.run_id} state={run.state}")
    sys.exit(0 if run.state == "success" else 1)


if __name__ == "__main__":
    main()
