"""Prometheus metrics, one registry per app (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.callbacks_received = Counter(
            "beacon_callbacks_received", "WeCom callbacks accepted and stored", ["source"], registry=r
        )
        self.callbacks_rejected = Counter(
            "beacon_callbacks_rejected", "Callbacks refused", ["reason"], registry=r
        )
        self.callbacks_processed = Counter(
            "beacon_callbacks_processed", "Inbox items processed", ["kind"], registry=r
        )
        self.callbacks_failed = Counter(
            "beacon_callbacks_failed", "Inbox handler failures (each attempt)", ["kind"], registry=r
        )
        self.callbacks_parked = Counter("beacon_callbacks_parked", "Inbox items parked", registry=r)
        self.inbox_gave_way = Counter(
            "beacon_inbox_gave_way_seconds", "Time the inbox worker left the core to edge requests in progress (bot.edge)", registry=r
        )
        self.inbox_depth = Gauge("beacon_inbox_depth", "Inbox items waiting", ["status"], registry=r)
        self.outbox_depth = Gauge("beacon_outbox_depth", "Outbox items waiting", ["status"], registry=r)
        self.profiles_due = Gauge("beacon_profiles_due", "Contacts waiting for their WeCom profile (counted up to 10,000)", registry=r)
        self.tracker_backlog = Gauge("beacon_tracker_backlog", "Events not yet attributed and scored", registry=r)
        self.tracker_lag = Gauge("beacon_tracker_lag_seconds", "How long the oldest unprocessed event has waited", registry=r)
        self.tracker_gave_way = Counter(
            "beacon_tracker_gave_way_seconds", "Time the tracker left the core to edge requests in progress (bot.edge)", registry=r
        )
        self.wakeups_sent = Counter(
            "beacon_wakeups_sent", "NOTIFY sent to wake another process's workers (bot/notify.py)", ["channel"], registry=r
        )
        self.wakeups_received = Counter(
            "beacon_wakeups_received", "Another process's NOTIFY that woke a worker here (bot/notify.py)", ["channel"], registry=r
        )
        self.tracker_batches = Counter(
            "beacon_tracker_batches", "Tracker passes committed (events per pass = events / batches)", registry=r
        )
        self.tracker_events = Counter("beacon_tracker_events", "Events attributed and scored by this process", registry=r)
        self.tracker_warmed = Counter(
            "beacon_tracker_warmed_contacts",
            "Contacts whose scoring state was replayed before the tracker's write transaction, outside its lock",
            registry=r,
        )
        self.wecom_calls = Counter(
            "beacon_wecom_api_calls", "WeCom API answers by path and errcode", ["path", "errcode"], registry=r
        )
        self.wal_frames = Gauge("beacon_sqlite_wal_frames", "SQLite: WAL size in pages at the last background checkpoint", registry=r)
        self.wal_checkpoint_longest = Gauge(
            "beacon_sqlite_checkpoint_longest_seconds", "SQLite: the longest background WAL checkpoint so far", registry=r
        )
        self.db_checks = Counter(
            "beacon_db_connection_checks", "PostgreSQL: pooled connections checked before use, by outcome: alive or "
            "dead (pinged: idle, or last used before one was found dead), closed (known closed by the driver, no "
            "ping); dead and closed ones are replaced by a new connection", ["outcome"], registry=r
        )
        self.unavailable_answers = Counter(
            "beacon_unavailable_answers", "Requests answered 503 because the database could not serve "
            "(down, restarting, locked past the busy timeout, no pooled connection free)", registry=r
        )
        self.worker_failed_passes = Counter(
            "beacon_worker_failed_passes", "Background worker passes that failed, by worker and cause "
            "(database: it could not serve, the pass is retried at the next poll; error: anything else)",
            ["worker", "cause"], registry=r
        )
        self.events_recorded = Counter(
            "beacon_events_recorded", "Behavior events stored", ["type"], registry=r
        )

    def on_wecom_call(self, path: str, errcode: int) -> None:
        self.wecom_calls.labels(path=path, errcode=str(errcode)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
