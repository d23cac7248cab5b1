"""A run's buffer (sweeper.records.run_buffer): chunks MLflow accepts, dropped only once sent,
a newer value queued meanwhile kept, everything masked."""

from __future__ import annotations

from sweeper.records.run_buffer import MAX_ENTITIES_PER_CALL, MAX_PARAMS_OR_TAGS_PER_CALL, MAX_TAG_LENGTH, RunBuffer


def test_batches_fit_mlflow_s_limits_and_leave_nothing_once_sent():
    buffer = RunBuffer()
    buffer.add_params({f"p{i}": i for i in range(250)})
    buffer.add_tags({"t": "x" * (MAX_TAG_LENGTH + 10)})
    buffer.add_metrics(range(2500))  # stand-ins for mlflow.entities.Metric
    sent = {"params": 0, "metrics": 0}
    while True:
        params, tags, metrics = buffer.next_batch()
        if not (params or tags or metrics):
            break
        assert len(params) <= MAX_PARAMS_OR_TAGS_PER_CALL and len(params) + len(tags) + len(metrics) <= MAX_ENTITIES_PER_CALL
        assert all(len(value) <= MAX_TAG_LENGTH for _, value in tags)
        buffer.sent_batch(params, tags, metrics)
        sent["params"] += len(params)
        sent["metrics"] += len(metrics)
    assert sent == {"params": 250, "metrics": 2500} and buffer.tags() == {}


def test_a_value_queued_again_while_its_old_one_was_sent_stays_queued():
    buffer = RunBuffer()
    buffer.add_tags({"status": "running", "sweep": "s"})
    params, tags, metrics = buffer.next_batch()
    buffer.add_tags({"status": "finished"})  # the trial ended while the batch was on its way
    buffer.sent_batch(params, tags, metrics)
    assert buffer.tags() == {"status": "finished"}
    buffer.attach("a.txt", "one")
    ((name, data),) = buffer.artifacts()
    buffer.attach("a.txt", "two")
    buffer.sent_artifact(name, data)
    assert buffer.artifacts() == [("a.txt", b"two")]


def test_the_end_is_sent_once_and_nothing_secret_is_queued():
    buffer = RunBuffer()
    assert not buffer.ended and buffer.pending_end() is None
    buffer.end("FINISHED", 123)
    assert buffer.ended and buffer.ended_unsent()
    buffer.sent_end(buffer.pending_end())
    assert buffer.ended and not buffer.ended_unsent() and buffer.pending_end() is None
    buffer.add_tags({"storage": "postgresql://user:hunter2@db/optuna"}, keep_queued=True)
    buffer.add_tags({"storage": "ignored: already queued"}, keep_queued=True)
    assert "hunter2" not in buffer.tags()["storage"] and buffer.tags()["storage"].startswith("postgresql://user:")
