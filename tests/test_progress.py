"""Progress in batch logs: a line per tenth of the work or per minute, with rate and time left."""

import logging

from ctxq_cli.progress import LogProgress, progress


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_batch_log_gets_a_line_per_tenth_with_rate_and_time_left(caplog):
    clock = Clock()
    bar = LogProgress(200, "train", "step", clock=clock)
    with caplog.at_level(logging.INFO, logger="ctxq"):
        for _ in range(200):
            clock.now += 0.5
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 10
    assert lines[0] == "train: step 20/200 (10 %), 2 step/s, 90 s left"
    assert lines[-1].startswith("train: step 200/200 (100 %)") and lines[-1].endswith("0 s left")


def test_slow_work_gets_a_line_every_minute(caplog):
    clock = Clock()
    bar = LogProgress(1000, "impute", "frame", clock=clock)
    with caplog.at_level(logging.INFO, logger="ctxq"):
        for _ in range(30):          # 3 % of the work in 15 minutes
            clock.now += 30.0
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 15
    assert lines[0] == "impute: frame 2/1000 (0 %), 0.0333 frame/s, 8.3 h left"


def test_a_resumed_run_counts_its_rate_from_where_it_resumed(caplog):
    clock = Clock()
    bar = LogProgress(100, "train", "step", initial=50, clock=clock)
    with caplog.at_level(logging.INFO, logger="ctxq"):
        for _ in range(10):
            clock.now += 1.0
            bar.set_postfix(loss="0.1234", refresh=False)
            bar.update(1)
    assert (caplog.records[0].getMessage()
            == "train: step 60/100 (60 %), 1 step/s, 40 s left, loss 0.1234")


def test_progress_is_log_lines_when_stderr_is_not_a_terminal(capsys):
    assert isinstance(progress(10, "train", "step"), LogProgress)   # pytest captures stderr
    assert not isinstance(progress(10, "train", "step", enabled=False), LogProgress)
