"""A channel's rate limit holds across the processes of one instance: the server's sender and the
delivery child take from one token bucket kept in a file under the data directory (``flock``)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from goldkey.activate.sender import SharedTokenBucket, TokenBucket, rate_limit_dir


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_two_buckets_on_one_file_share_the_tokens(tmp_path: Path) -> None:
    t = FakeTime()
    path = tmp_path / "ch.bucket"
    # two open files of one path behave as two processes would (flock is per open file)
    a = SharedTokenBucket(path, 10, 2, clock=t.clock, sleep=t.sleep)
    b = SharedTokenBucket(path, 10, 2, clock=t.clock, sleep=t.sleep)
    for _ in range(6):
        a.take()
        b.take()
    # 12 tokens at 10/s from a full bucket of 2: 1.0 s; two private buckets would have taken 0.4 s
    assert abs((t.now - 1000.0) - 1.0) < 1e-9
    a.close()
    b.close()
    t2 = FakeTime()
    p, q = TokenBucket(10, 2, t2.clock, t2.sleep), TokenBucket(10, 2, t2.clock, t2.sleep)
    for _ in range(6):
        p.take()
        q.take()
    assert abs((t2.now - 1000.0) - 0.4) < 1e-9  # what the server and its child did before


def test_a_restarted_clock_refills_instead_of_starving(tmp_path: Path) -> None:
    t = FakeTime()
    path = tmp_path / "ch.bucket"
    a = SharedTokenBucket(path, 10, 1, clock=t.clock, sleep=t.sleep)
    a.take()
    a.close()
    t.now = 5.0  # after a reboot the monotonic clock starts again near zero
    b = SharedTokenBucket(path, 10, 1, clock=t.clock, sleep=t.sleep)
    b.take()
    assert t.now == 5.0  # taken at once: the stored time from before the reboot does not block it
    b.close()


_TAKER = """
import sys, time
from pathlib import Path
from goldkey.activate.sender import SharedTokenBucket
b = SharedTokenBucket(Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
print(sys.stdin.readline(), end="", flush=True)  # wait for the go
out = []
for _ in range(int(sys.argv[4])):
    b.take()
    out.append(time.monotonic())
print(" ".join(repr(x) for x in out), flush=True)
"""


def test_two_processes_together_keep_the_rate(tmp_path: Path) -> None:
    """The server process and a second process (as the delivery child is) take 15 tokens each from a
    channel limited to 40/s with a burst of 2: every take of both, in time order, respects the
    bucket, i.e. the k-th take comes at least (k - burst) / rate after the first."""
    rate, burst, n = 40.0, 2, 15
    path = tmp_path / "rate-limits" / "ch_1.bucket"
    path.parent.mkdir()
    child = subprocess.Popen([sys.executable, "-c", _TAKER, str(path), str(rate), str(burst), str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    mine = SharedTokenBucket(path, rate, burst)
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "go\n"
    takes: list[float] = []
    for _ in range(n):
        mine.take()
        takes.append(time.monotonic())
    theirs = [float(x) for x in child.stdout.readline().split()]
    assert child.wait(timeout=30) == 0
    mine.close()
    assert len(theirs) == n
    allt = sorted(takes + theirs)
    slack = 1e-3
    for k, at in enumerate(allt):
        assert at - allt[0] >= (k - burst + 1) / rate - slack, (k, at - allt[0])
    # the whole run took at least (2n - burst) / rate: one private bucket each would take half
    assert allt[-1] - allt[0] >= (2 * n - burst) / rate - slack


def test_the_instance_sender_uses_the_shared_buckets(env: Any) -> None:
    """The server's sender keeps its buckets under the data directory (the delivery child's use of
    the same files: tests/activate/test_delivery_process.py)."""
    assert env.gk.sender.rate_dir == rate_limit_dir(env.gk.settings.data_dir)


def test_a_changed_rate_is_applied_to_the_bucket_in_use(env: Any, tmp_path: Path) -> None:
    """Sends in flight keep the channel's bucket: a new rate is applied to it, the file stays open."""
    from types import SimpleNamespace

    sender = env.gk.sender
    limit = SimpleNamespace(per_second=5.0, burst=3)
    ch = SimpleNamespace(rate_limit=lambda: limit)
    b = sender._bucket("ch_rate_test", ch)
    assert isinstance(b, SharedTokenBucket) and (b.rate, b.capacity) == (5.0, 3)
    limit.per_second, limit.burst = 50.0, 1
    assert sender._bucket("ch_rate_test", ch) is b and (b.rate, b.capacity) == (50.0, 1)
    b.take()  # its file is still open and usable
