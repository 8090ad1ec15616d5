"""The loader's batch size follows the server's latency (its transactions time out after 5 s)."""

from __future__ import annotations

from migrate.customermates.columns import ColumnIndex
from migrate.customermates.load import Loader
from migrate.staging.store import Staging


def loader(tmp_path) -> Loader:
    return Loader(Staging(tmp_path / "s.duckdb"), client=None, columns=ColumnIndex(), run_id="r")  # type: ignore[arg-type]


def test_batches_start_at_fifty_and_grow_while_predicted_fast(tmp_path):
    load = loader(tmp_path)
    assert load.batch_size == 50
    load._tune(elapsed=0.55, size=50)  # 11 ms per item: 63 items ≈ 0.7 s
    assert load.batch_size == 63
    for _ in range(5):
        load._tune(elapsed=load.batch_size * 0.011, size=load.batch_size)
    assert load.batch_size == 100


def test_a_slow_batch_shrinks_the_next_ones(tmp_path):
    load = loader(tmp_path)
    load._tune(elapsed=3.4, size=50)
    assert load.batch_size == 30


def test_growth_stops_where_the_predicted_time_gets_long(tmp_path):
    load = loader(tmp_path)
    load._tune(elapsed=1.8, size=50)  # 36 ms per item: 63 items would take 2.3 s
    assert load.batch_size == 50


def test_a_size_that_failed_is_never_reached_again(tmp_path):
    load = loader(tmp_path)
    load.ceiling = 59  # as after an uncertain failure at 60 items
    load.batch_size = 55
    load._tune(elapsed=0.3, size=55)
    assert load.batch_size == 59
