"""Micro-benchmark of the storage-free import pipeline.

Generates synthetic customer and order rows (realistic mess: formatted phone
numbers, several date spellings, currency symbols, region spellings, a few
invalid values and duplicates), then times

* ``clean`` alone on an in-memory all-text frame, and
* the whole file path: ``read_table`` (CSV) + ``apply_mapping`` + ``clean``.

Usage::

    python benchmarks/bench_cleaning.py [--rows 500000] [--repeat 3]

Prints rows/s (wall clock, best of --repeat runs, phonenumbers cache cleared
before each run) and CPU seconds for each stage; the target is 200,000 rows/s
for the whole import on a 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import polars as pl

from goldkey.collect.cleaning import clean, normalise_phone
from goldkey.collect.import_schemas import SCHEMAS
from goldkey.collect.reading import apply_mapping, read_table


def _pick(h: pl.Expr, options: list[str]) -> pl.Expr:
    """Choose one of *options* by hash value."""
    return pl.lit(pl.Series(options)).get((h % len(options)).cast(pl.Int64))


def _rand(seed: int) -> pl.Expr:
    return pl.col("i").hash(seed)


def customers(n: int) -> pl.DataFrame:
    """Return *n* synthetic customer rows as text (about 2% duplicates)."""
    base = pl.DataFrame({"i": pl.int_range(0, n, eager=True)})
    # ~2% of rows repeat an earlier customer.
    cid = pl.when(_rand(1) % 50 == 0).then(pl.col("i") // 3).otherwise(pl.col("i"))
    mobile = pl.lit("13") + (pl.lit(800000000) + cid * 7 % 99_999_999).cast(pl.Utf8).str.zfill(9)
    phone_variant = _rand(2) % 20
    phone = (
        pl.when(phone_variant == 0)
        .then(pl.lit("+86 ") + mobile)
        .when(phone_variant == 1)
        .then(mobile.str.slice(0, 3) + " " + mobile.str.slice(3, 4) + " " + mobile.str.slice(7))
        .when(phone_variant == 2)
        .then(pl.lit("86") + mobile)
        .when(phone_variant == 3)
        .then(pl.lit("010-8888 ") + (cid % 9000 + 1000).cast(pl.Utf8))
        .when(_rand(3) % 1000 == 0)
        .then(pl.lit("12345"))
        .otherwise(mobile)
    )
    y = (1960 + _rand(4) % 45).cast(pl.Utf8)
    mo = (1 + _rand(5) % 12).cast(pl.Utf8)
    d = (1 + _rand(6) % 28).cast(pl.Utf8)
    date_variant = _rand(7) % 10
    birthday = (
        pl.when(date_variant == 0)
        .then(y + "/" + mo + "/" + d)
        .when(date_variant == 1)
        .then(y + "年" + mo + "月" + d + "日")
        .when(date_variant == 2)
        .then(y + mo.str.zfill(2) + d.str.zfill(2))
        .otherwise(y + "-" + mo.str.zfill(2) + "-" + d.str.zfill(2))
    )
    hh = (_rand(8) % 24).cast(pl.Utf8).str.zfill(2)
    mm = (_rand(9) % 60).cast(pl.Utf8).str.zfill(2)
    reg_date = pl.lit("2024-") + mo.str.zfill(2) + "-" + d.str.zfill(2)
    registered = (
        pl.when(_rand(10) % 10 == 0)
        .then(reg_date + "T" + hh + ":" + mm + ":00+08:00")
        .when(_rand(10) % 10 == 1)
        .then(reg_date + " " + hh + ":" + mm)
        .otherwise(reg_date + " " + hh + ":" + mm + ":00")
    )
    region = _pick(
        _rand(11),
        [
            "广东",
            "广东省",
            "Guangdong",
            "北京",
            "北京市",
            "上海市",
            "浙江",
            "江苏省",
            "四川",
            "Inner Mongolia",
            "香港",
            "湖北省",
            "山东",
            "河南省",
            "火星",
        ],
    )
    balance = (
        pl.when(_rand(12) % 5 == 0)
        .then(pl.lit("¥") + (_rand(13) % 5000).cast(pl.Utf8) + ".50")
        .when(_rand(12) % 5 == 1)
        .then(pl.lit("1,") + (_rand(13) % 900 + 100).cast(pl.Utf8) + ".00")
        .otherwise((_rand(13) % 5000).cast(pl.Utf8))
    )
    frame = base.select(
        (pl.lit("C") + cid.cast(pl.Utf8)).alias("客户编号"),
        phone.alias("手机号"),
        pl.when(_rand(14) % 3 == 0).then(pl.lit("User") + cid.cast(pl.Utf8) + "@Example.com").alias("邮箱"),
        (pl.lit("客户") + cid.cast(pl.Utf8)).alias("姓名"),
        _pick(_rand(15), ["男", "女", "M", "F", "female", ""]).alias("性别"),
        birthday.alias("生日"),
        region.alias("省份"),
        _pick(_rand(16), ["广州", "深圳", "北京", "上海", "杭州"]).alias("城市"),
        _pick(_rand(17), ["金卡", "银卡", "普通"]).alias("会员等级"),
        (_rand(18) % 100000).cast(pl.Utf8).alias("积分"),
        registered.alias("注册时间"),
        balance.alias("余额"),
        (_rand(19) % 1000).cast(pl.Utf8).alias("备注"),
    )
    return frame.with_columns(pl.all().cast(pl.Utf8))


CUSTOMER_MAPPING = {
    "客户编号": "crm_id",
    "手机号": "phone",
    "邮箱": "email",
    "姓名": "name",
    "性别": "gender",
    "生日": "birthday",
    "省份": "region",
    "城市": "city",
    "会员等级": "member_tier",
    "积分": "points",
    "注册时间": "registered_at",
    "余额": "balance",
}


def orders(n: int) -> pl.DataFrame:
    """Return *n* synthetic order lines as text (about 1% exact duplicates)."""
    base = pl.DataFrame({"i": pl.int_range(0, n, eager=True)})
    row = pl.when(_rand(1) % 100 == 0).then(pl.col("i") - 1).otherwise(pl.col("i")).clip(0)
    oid = row // 3
    mobile = pl.lit("139") + (pl.lit(10000000) + oid * 13 % 89_999_999).cast(pl.Utf8).str.zfill(8)
    day = (1 + oid % 28).cast(pl.Utf8).str.zfill(2)
    hh = (oid % 24).cast(pl.Utf8).str.zfill(2)
    mm = (oid % 60).cast(pl.Utf8).str.zfill(2)
    ordered = (
        pl.when(oid % 10 == 0)
        .then(pl.lit("2025/3/") + (1 + oid % 28).cast(pl.Utf8) + " " + hh + ":" + mm)
        .otherwise(pl.lit("2025-03-") + day + " " + hh + ":" + mm + ":00")
    )
    price = (row.hash(21) % 50000 + 100).cast(pl.Utf8)
    price_text = pl.when(row.hash(22) % 4 == 0).then(pl.lit("¥") + price).otherwise(price)
    refund = row.hash(23) % 200 == 0
    frame = base.select(
        (pl.lit("O") + oid.cast(pl.Utf8)).alias("order_id"),
        ordered.alias("ordered_at"),
        mobile.alias("phone"),
        (pl.lit("SKU") + (row % 3 + row.hash(24) % 500).cast(pl.Utf8)).alias("sku"),
        _pick(row.hash(25), ["手机", "耳机", "充电器", "保护壳"]).alias("product_name"),
        _pick(row.hash(26), ["1", "2", "", "3"]).alias("quantity"),
        price_text.alias("unit_price"),
        pl.when(refund).then(pl.lit("-") + price).alias("line_amount"),
        _pick(row.hash(27), ["CNY", "RMB", ""]).alias("currency"),
        _pick(row.hash(28), ["天猫", "京东", "门店", "小程序"]).alias("channel"),
        _pick(row.hash(29), ["广东省", "北京", "Zhejiang", "四川省"]).alias("region"),
        pl.when(refund).then(pl.lit("refund")).otherwise(pl.lit("paid")).alias("status"),
    )
    return frame.with_columns(pl.all().cast(pl.Utf8))


def _time(fn, repeat: int) -> tuple[float, float, object]:
    """Return (best wall seconds, CPU seconds of that run, result)."""
    best, best_cpu = float("inf"), 0.0
    result = None
    for _ in range(repeat):
        normalise_phone.cache_clear()  # every run starts cold, like a new file
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        wall = time.perf_counter() - start
        if wall < best:
            best, best_cpu = wall, time.process_time() - cpu
    return best, best_cpu, result


def _line(label: str, n: int, wall: float, cpu: float, note: str = "") -> None:
    print(
        f"{label:24s} {wall:6.3f} s wall {n / wall:10,.0f} rows/s | "
        f"CPU {cpu:6.3f} s ({n / cpu:10,.0f} rows per CPU-second) {note}"
    )


def main() -> None:
    """Run the benchmark and print rows/s."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    n = args.rows
    print(f"polars {pl.__version__}, threads {pl.thread_pool_size()}, rows {n:,}")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, make, mapping in (
            ("customers", customers, CUSTOMER_MAPPING),
            ("orders", orders, {}),
        ):
            schema = SCHEMAS[kind]
            raw = make(n)
            path = Path(tmp) / f"{kind}.csv"
            raw.write_csv(path)
            mapped = apply_mapping(raw, mapping, schema)
            wall, cpu, res = _time(lambda m=mapped, s=schema: clean(m, s), args.repeat)
            _line(
                f"{kind} clean",
                n,
                wall,
                cpu,
                f"[accepted {res.accepted.height:,}, rejected {len(res.rejected):,}, "
                f"merged {res.duplicates_merged:,}, regions unrecognised {res.regions_unrecognised:,}]",
            )
            wall, cpu, _ = _time(lambda p=path: read_table(p), args.repeat)
            _line(f"{kind} read CSV", n, wall, cpu, f"[{path.stat().st_size / 1e6:.1f} MB]")

            def full(p: Path = path, m: dict = mapping, s: object = schema) -> object:
                return clean(apply_mapping(read_table(p), m, s), s)

            wall, cpu, _ = _time(full, args.repeat)
            _line(f"{kind} read+map+clean", n, wall, cpu)


if __name__ == "__main__":
    main()
