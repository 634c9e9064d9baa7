-- The payout ledger's schema 1 on postgresql, as airflow-provider-feishu-hire 3be5f65 created it (schema 1 until 8cda24a).
CREATE TABLE IF NOT EXISTS feishu_hire_ledger_schema (
        version INTEGER NOT NULL, migrated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS feishu_hire_withdrawal (
        external_order_id TEXT PRIMARY KEY,
        referral_account_id TEXT NOT NULL,
        withdraw_bonus_type TEXT NOT NULL,
        app_id TEXT NOT NULL,
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        requested_at TEXT NOT NULL,
        status TEXT NOT NULL,
        sends INTEGER NOT NULL DEFAULT 0,
        trans_time BIGINT,
        point_bonus BIGINT,
        error_code BIGINT,
        error_msg TEXT,
        log_id TEXT,
        raw_answer TEXT,
        updated_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_run ON feishu_hire_withdrawal (dag_id, run_id);
CREATE INDEX IF NOT EXISTS feishu_hire_withdrawal_trans_time ON feishu_hire_withdrawal (trans_time);
CREATE TABLE IF NOT EXISTS feishu_hire_withdrawal_cash (
        external_order_id TEXT NOT NULL REFERENCES feishu_hire_withdrawal (external_order_id),
        currency_type TEXT NOT NULL,
        amount NUMERIC NOT NULL,
        PRIMARY KEY (external_order_id, currency_type));
CREATE TABLE IF NOT EXISTS feishu_hire_withdrawal_attempt (
        id BIGSERIAL PRIMARY KEY,
        external_order_id TEXT NOT NULL REFERENCES feishu_hire_withdrawal (external_order_id),
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        try_number INTEGER NOT NULL,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        outcome TEXT,
        error_code BIGINT,
        error_msg TEXT,
        log_id TEXT);
CREATE INDEX IF NOT EXISTS feishu_hire_attempt_order ON feishu_hire_withdrawal_attempt (external_order_id);
CREATE TABLE IF NOT EXISTS feishu_hire_payroll (
        external_order_id TEXT NOT NULL,
        bonus_type TEXT NOT NULL,
        currency TEXT NOT NULL,
        referral_account_id TEXT NOT NULL,
        trans_time TEXT NOT NULL,
        amount NUMERIC NOT NULL,
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        PRIMARY KEY (external_order_id, bonus_type, currency));
CREATE TABLE IF NOT EXISTS feishu_hire_task_lease (
        dag_id TEXT NOT NULL,
        run_id TEXT NOT NULL,
        task_id TEXT NOT NULL,
        map_index INTEGER NOT NULL,
        try_number INTEGER NOT NULL,
        taken_at TEXT NOT NULL,
        PRIMARY KEY (dag_id, run_id, task_id, map_index));
CREATE TABLE IF NOT EXISTS feishu_hire_pace (
        pace_key TEXT PRIMARY KEY,
        next_slot DOUBLE PRECISION NOT NULL);
INSERT INTO feishu_hire_ledger_schema VALUES (1, '2026-11-25T00:00:00.000+00:00');
