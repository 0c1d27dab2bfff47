"""File import benchmark: customers and orders CSV through ``goldkey import`` and in-process.

Generates (seeded, reproducible) a customers CSV of N rows with a Chinese CRM export's columns
and mess: CRM ids, mainland mobile numbers with formatting noise (``+86 138 0013 8000``,
``138-0013-8000``, ``86138...``, a few invalid), e-mails in mixed case, Chinese names, gender
spellings, birthdays in several date formats, province names in several spellings, registration
times, points and balances with currency symbols and thousands separators, ~2% duplicate
customers and an unmapped column; and an orders CSV of N order lines (1-4 lines per order)
whose customers are named by CRM id or phone.

Each file is imported
* through the CLI: ``goldkey import KIND FILE --workspace bench --map ... --data-dir D`` (a fresh
  data dir; the wall time includes process start-up), and
* in-process: ``Goldkey.open`` + ``gk.importer.run`` on another fresh data dir, with the stages
  timed by wrapping functions in this process only: read CSV, map columns, clean, then the write
  on the writer thread (identity resolution and both stores).

Prints rows/s (wall) and rows per CPU-second for the whole import and for each stage (a stage's
CPU is this process's, all threads, while the stage runs: on a shared machine the wall time
stalls, CPU seconds much less). ``--postgres`` runs the in-process imports on a fresh PostgreSQL
database instead of SQLite and adds the CPU of its server backends. Target (reported, not
asserted): >= 200,000 rows/s.

Usage::

    python benchmarks/bench_import.py [--quick] [--rows 500000] [--mode both|cli|inproc]
        [--kinds customers,orders] [--repeat N] [--postgres ADMIN_URL]
"""

from __future__ import annotations

import argparse
import functools
import inspect
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    check_noise,
    cpu_seconds,
    create_workspace,
    emit_summary,
    goldkey_cmd,
    machine_line,
)

TARGET_ROWS_S = 200_000

_SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈")
_GIVEN = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉萍红娥玲芬燕彬鹏飞婷雪琳晨宇浩然子涵欣怡梓萱")
_PROVINCES = [
    "广东",
    "广东省",
    "Guangdong",
    "北京",
    "北京市",
    "上海市",
    "浙江",
    "浙江省",
    "江苏省",
    "四川",
    "山东省",
    "河南",
    "湖北省",
    "湖南省",
    "福建",
    "内蒙古自治区",
    "Inner Mongolia",
    "广西壮族自治区",
    "香港",
    "重庆市",
    "陕西省",
    "辽宁",
    "",
]
_CITIES = ["广州", "深圳", "北京", "上海", "杭州", "南京", "成都", "武汉", "西安", "厦门", "重庆", "长沙"]

CUSTOMER_MAP = {
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
ORDER_MAP = {
    "订单号": "order_id",
    "下单时间": "ordered_at",
    "客户编号": "crm_id",
    "手机号": "phone",
    "商品编码": "sku",
    "商品名称": "product_name",
    "品类": "category",
    "数量": "quantity",
    "单价": "unit_price",
    "渠道": "channel",
    "门店": "store",
    "省份": "region",
    "订单状态": "status",
}


def _h(seed: int) -> pl.Expr:
    return pl.col("i").hash(seed)


def _pick(h: pl.Expr, options: list[str]) -> pl.Expr:
    return pl.lit(pl.Series(options)).get((h % len(options)).cast(pl.Int64))


def _mobile(cid: pl.Expr) -> pl.Expr:
    prefix = _pick(cid.hash(99), ["138", "139", "137", "150", "151", "186", "188", "135", "177", "199"])
    return prefix + (cid * 7919 % 100_000_000).cast(pl.Utf8).str.zfill(8)


def customers(n: int) -> pl.DataFrame:
    base = pl.DataFrame({"i": pl.int_range(0, n, eager=True)})
    cid = pl.when(_h(1) % 50 == 0).then(pl.col("i") // 2).otherwise(pl.col("i"))  # ~2% repeat a customer
    m = _mobile(cid)
    v = _h(2) % 20
    phone = (
        pl.when(v == 0)
        .then(pl.lit("+86 ") + m.str.slice(0, 3) + " " + m.str.slice(3, 4) + " " + m.str.slice(7))
        .when(v == 1)
        .then(m.str.slice(0, 3) + "-" + m.str.slice(3, 4) + "-" + m.str.slice(7))
        .when(v == 2)
        .then(pl.lit("86") + m)
        .when(v == 3)
        .then(pl.lit(" ") + m + " ")
        .when(v == 4)
        .then(pl.lit(None, pl.Utf8))
        .when(_h(3) % 500 == 0)
        .then(pl.lit("1234"))
        .otherwise(m)
    )
    email_user = _pick(_h(4), ["user", "vip", "Chen", "wang.li", "Zhang_S"]) + cid.cast(pl.Utf8)
    email = pl.when(_h(5) % 3 == 0).then(
        email_user + "@" + _pick(_h(6), ["qq.com", "163.com", "Gmail.com", "126.com", "example.cn"])
    )
    name = (
        _pick(_h(7), _SURNAMES)
        + _pick(_h(8), _GIVEN)
        + pl.when(_h(9) % 2 == 0).then(_pick(_h(10), _GIVEN)).otherwise(pl.lit(""))
    )
    y = (1955 + _h(11) % 50).cast(pl.Utf8)
    mo = (1 + _h(12) % 12).cast(pl.Utf8)
    d = (1 + _h(13) % 28).cast(pl.Utf8)
    dv = _h(14) % 10
    birthday = (
        pl.when(dv == 0)
        .then(y + "/" + mo + "/" + d)
        .when(dv == 1)
        .then(y + "年" + mo + "月" + d + "日")
        .when(dv == 2)
        .then(y + mo.str.zfill(2) + d.str.zfill(2))
        .when(dv == 3)
        .then(pl.lit(None, pl.Utf8))
        .otherwise(y + "-" + mo.str.zfill(2) + "-" + d.str.zfill(2))
    )
    ry = (2015 + _h(15) % 10).cast(pl.Utf8)
    reg = ry + "-" + mo.str.zfill(2) + "-" + d.str.zfill(2)
    hh = (_h(16) % 24).cast(pl.Utf8).str.zfill(2)
    mi = (_h(17) % 60).cast(pl.Utf8).str.zfill(2)
    rv = _h(18) % 10
    registered = (
        pl.when(rv == 0)
        .then(reg + "T" + hh + ":" + mi + ":00+08:00")
        .when(rv == 1)
        .then(reg + " " + hh + ":" + mi)
        .otherwise(reg + " " + hh + ":" + mi + ":00")
    )
    bal = (_h(19) % 20000).cast(pl.Utf8)
    bv = _h(20) % 5
    balance = (
        pl.when(bv == 0)
        .then(pl.lit("¥") + bal + ".50")
        .when(bv == 1)
        .then(pl.lit("1,") + (_h(21) % 900 + 100).cast(pl.Utf8) + ".00")
        .when(bv == 2)
        .then(pl.lit("RMB ") + bal)
        .otherwise(bal)
    )
    frame = base.select(
        (pl.lit("CRM") + cid.cast(pl.Utf8).str.zfill(8)).alias("客户编号"),
        phone.alias("手机号"),
        email.alias("邮箱"),
        name.alias("姓名"),
        _pick(_h(22), ["男", "女", "M", "F", "female", "男士", "女士", "", "保密"]).alias("性别"),
        birthday.alias("生日"),
        _pick(_h(23), _PROVINCES).alias("省份"),
        _pick(_h(24), _CITIES).alias("城市"),
        _pick(_h(25), ["金卡", "银卡", "普通会员", "钻石卡"]).alias("会员等级"),
        (_h(26) % 100_000).cast(pl.Utf8).alias("积分"),
        registered.alias("注册时间"),
        balance.alias("余额"),
        _pick(_h(27), ["", "老客户", "投诉过", "团购"]).alias("备注"),
    )
    return frame


def orders(n_lines: int, n_customers: int) -> pl.DataFrame:
    base = pl.DataFrame({"i": pl.int_range(0, n_lines, eager=True)})
    oid = pl.col("i") * 2 // 5  # ~2.5 lines per order on average
    cust = oid.hash(31) % max(1, n_customers)
    by_phone = oid.hash(32) % 4 == 0
    day = (1 + oid % 28).cast(pl.Utf8).str.zfill(2)
    mon = (1 + oid.hash(33) % 12).cast(pl.Utf8).str.zfill(2)
    hh = (oid.hash(34) % 24).cast(pl.Utf8).str.zfill(2)
    mi = (oid.hash(35) % 60).cast(pl.Utf8).str.zfill(2)
    ordered = (
        pl.when(oid % 10 == 0)
        .then(pl.lit("2025/") + mon + "/" + day + " " + hh + ":" + mi)
        .otherwise(pl.lit("2025-") + mon + "-" + day + " " + hh + ":" + mi + ":00")
    )
    price = (_h(36) % 50_000 + 100).cast(pl.Utf8)
    refund = oid.hash(37) % 100 == 0
    return base.select(
        (pl.lit("SO") + oid.cast(pl.Utf8).str.zfill(9)).alias("订单号"),
        ordered.alias("下单时间"),
        pl.when(by_phone)
        .then(pl.lit(None, pl.Utf8))
        .otherwise(pl.lit("CRM") + cust.cast(pl.Utf8).str.zfill(8))
        .alias("客户编号"),
        pl.when(by_phone).then(_mobile(cust)).alias("手机号"),
        (pl.lit("SKU") + (_h(38) % 800).cast(pl.Utf8).str.zfill(4)).alias("商品编码"),
        _pick(_h(39), ["防蓝光眼镜", "隐形眼镜日抛", "护理液 360ml", "镜框 钛合金", "太阳镜"]).alias("商品名称"),
        _pick(_h(40), ["镜片", "隐形", "护理", "镜框", "太阳镜"]).alias("品类"),
        _pick(_h(41), ["1", "1", "2", "3", ""]).alias("数量"),
        pl.when(_h(42) % 4 == 0).then(pl.lit("¥") + price).otherwise(price).alias("单价"),
        _pick(oid.hash(43), ["天猫", "京东", "门店", "小程序", "抖音"]).alias("渠道"),
        _pick(oid.hash(44), ["广州天河店", "深圳南山店", "上海徐汇店", "线上"]).alias("门店"),
        _pick(oid.hash(45), _PROVINCES).alias("省份"),
        pl.when(refund).then(pl.lit("refund")).otherwise(pl.lit("paid")).alias("订单状态"),
    )


# -- stage timing (this process only) --------------------------------------------------------------
STAGES: dict[str, float] = defaultdict(float)
STAGE_CPU: dict[str, float] = defaultdict(float)  # process CPU seconds (all threads) inside each stage


def _wrap(owner: Any, name: str, label: str) -> Any:
    fn = getattr(owner, name, None)
    if fn is None:
        return None
    static = isinstance(inspect.getattr_static(owner, name, None), staticmethod)

    @functools.wraps(fn)
    def timed(*a: Any, **kw: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **kw)
        finally:
            STAGES[label] += time.perf_counter() - t
            STAGE_CPU[label] += time.process_time() - c

    setattr(owner, name, staticmethod(timed) if static else timed)
    return fn


def instrument() -> None:
    """Time the import's stages (wall and process CPU), nested stages indented under their parent."""
    from goldkey.collect import importer as imp
    from goldkey.collect.writer import Writer
    from goldkey.identity import graph
    from goldkey.store.analytical import AnalyticalStore

    for label in STAGE_ORDER:  # a fixed print order: parents before the stages inside them
        STAGES[label] = 0.0
        STAGE_CPU[label] = 0.0
    _wrap(imp, "read_table", "read CSV")
    _wrap(imp, "apply_mapping", "map columns")
    _wrap(imp, "clean", "clean")
    _wrap(Writer, "run_command", "write (writer thread)")
    _wrap(imp.Importer, "_rows", "  rows to Python dicts")
    _wrap(imp, "attribute_json", "  customer attributes JSON")
    _wrap(imp.Importer, "_resolve_rows", "  identity resolution")
    _wrap(graph.IdentityGraph, "_lookup", "    identifier lookups (operational)")
    _wrap(graph, "_bulk_insert", "    profile/identity inserts (operational)")
    _wrap(graph.IdentityGraph, "flush", "    flush (merges, conflicts)")
    _wrap(AnalyticalStore, "append", "  orders/lines appends (DuckDB)")
    _wrap(imp, "refresh_order_summaries", "  order summaries")
    _wrap(imp, "executemany", "  importer UPDATE/INSERT (operational)")
    _wrap(imp.Importer, "_consents", "  consents")


STAGE_ORDER = (
    "read CSV",
    "map columns",
    "clean",
    "write (writer thread)",
    "  customer attributes JSON",
    "  identity resolution",
    "    identifier lookups (operational)",
    "    profile/identity inserts (operational)",
    "    flush (merges, conflicts)",
    "  consents",
    "  orders/lines appends (DuckDB)",
    "  order summaries",
    "  importer UPDATE/INSERT (operational)",
)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _load() -> str:
    return "load avg " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_cli(kind: str, path: Path, mapping: dict[str, str], data_dir: Path) -> tuple[float, float, str]:
    """Run one ``goldkey import``; return wall seconds, the child's CPU seconds and its summary line."""
    cmd = [*goldkey_cmd(), "import", kind, str(path), "--workspace", "bench", "--data-dir", str(data_dir)]
    for src, dst in mapping.items():
        cmd += ["--map", f"{src}={dst}"]
    t, c = time.perf_counter(), _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    secs, cpu = time.perf_counter() - t, _children_cpu() - c
    if out.returncode != 0:
        raise RuntimeError(f"goldkey import failed ({out.returncode}): {out.stderr[-2000:]}")
    lines = [x.strip() for x in (out.stderr + out.stdout).splitlines() if "rows read" in x]
    return secs, cpu, lines[-1] if lines else ""


@contextmanager
def _postgres_database(admin_url: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database on the server of ``admin_url`` (dropped afterwards), or None."""
    if not admin_url:
        yield None
        return
    import sqlalchemy as sa

    name = f"goldkey_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _backend_cpu(gk: Any) -> dict[int, float]:
    """CPU seconds of the PostgreSQL backends serving this database ({} on SQLite). The server
    runs on this machine; a backend that exits during an import takes its CPU with it."""
    if gk.engine.dialect.name != "postgresql":
        return {}
    import sqlalchemy as sa

    with gk.engine.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).all()
    return {p: cpu_seconds(p) for (p,) in pids}


def _inproc(gk: Any, ws: str, kind: str, path: Path, mapping: dict[str, str], n: int) -> list[dict[str, Any]]:
    """One in-process import with its stages timed; print the figures and return summary rows."""
    for label in list(STAGES):
        STAGES[label] = STAGE_CPU[label] = 0.0
    before = _backend_cpu(gk)
    t, c = time.perf_counter(), time.process_time()
    s = gk.importer.run(ws, kind, path, mapping)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    after = _backend_cpu(gk)
    server = sum(v - before.get(p, 0.0) for p, v in after.items())
    print(
        f"in-process {kind:9s}: {secs:7.2f} s -> {n / secs:10,.0f} rows/s; CPU {cpu:6.2f} s -> "
        f"{n / cpu if cpu else 0:10,.0f} rows/CPU-s; {_load()}  (read {s.rows_read:,}, "
        f"accepted {s.accepted:,}, quarantined {s.quarantined:,}, "
        f"duplicates merged {s.duplicates_merged:,})",
        flush=True,
    )
    if after:
        print(
            f"    PostgreSQL backends: CPU {server:6.2f} s; with this process {cpu + server:6.2f} s -> "
            f"{n / (cpu + server):10,.0f} rows/CPU-s"
        )
    clean_s = STAGES["read CSV"] + STAGES["map columns"] + STAGES["clean"]
    write_s = STAGES["write (writer thread)"]
    for label, v in STAGES.items():
        if not v:
            continue
        c = STAGE_CPU[label]
        print(
            f"    {label:42s} {v:7.2f} s {100 * v / secs:5.1f}% -> {n / v:12,.0f} rows/s"
            f"   CPU {c:6.2f} s -> {n / c if c > 0 else 0:12,.0f} rows/CPU-s"
        )
    print(f"    {'other (digest, bookkeeping)':42s} {secs - clean_s - write_s:7.2f} s")
    return [
        {
            "metric": f"import {kind} (in-process)",
            "value": round(n / secs),
            "unit": "rows/s",
            "target": f">= {TARGET_ROWS_S:,}",
            "met": n / secs >= TARGET_ROWS_S,
            "note": f"{secs:.1f} s, CPU {cpu:.1f} s ({n / cpu:,.0f} rows/CPU-s), {_load()}",
        },
        {
            "metric": f"  {kind}: read+map+clean",
            "value": round(n / clean_s) if clean_s else 0,
            "unit": "rows/s",
            "target": "-",
            "met": None,
            "note": f"{clean_s:.1f} s",
        },
        {
            "metric": f"  {kind}: write",
            "value": round(n / write_s) if write_s else 0,
            "unit": "rows/s",
            "target": "-",
            "met": None,
            "note": f"{write_s:.1f} s",
        },
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None, help="customer rows and order lines (default 500000)")
    ap.add_argument("--mode", choices=("both", "cli", "inproc"), default="both")
    ap.add_argument("--kinds", default="customers,orders", help="comma-separated: customers, orders")
    ap.add_argument(
        "--repeat", type=int, default=1, help="in-process runs (each on a fresh data directory); all are printed"
    )
    ap.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        default=None,
        help="in-process runs on a fresh PostgreSQL database of this server as the operational store "
        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres; dropped afterwards)",
    )
    args = ap.parse_args()
    n = args.rows or (20_000 if args.quick else 500_000)

    print("== bench_import: customers and orders CSV ==")
    print(machine_line().replace("server and load generator share these cores", "no server: import only"))
    check_noise()
    print(f"polars {pl.__version__} ({pl.thread_pool_size()} threads)")
    rows_out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="goldkey-bench-import-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        cust_csv, ord_csv = work / "customers.csv", work / "orders.csv"
        customers(n).write_csv(cust_csv)
        orders(n, n).write_csv(ord_csv)
        print(
            f"generated {n:,} customer rows ({cust_csv.stat().st_size / 1e6:.1f} MB) and {n:,} order lines "
            f"({ord_csv.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s"
        )
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        jobs = [j for j in (("customers", cust_csv, CUSTOMER_MAP), ("orders", ord_csv, ORDER_MAP)) if j[0] in kinds]

        if args.mode in ("both", "cli"):
            # the fixed cost of one ``goldkey import`` (interpreter, imports, opening the stores): a
            # one-row file on its own data directory
            tiny, tiny_dir = work / "one-customer.csv", work / "cli-tiny"
            customers(1).write_csv(tiny)
            create_workspace(tiny_dir, "bench")
            secs, cpu, _ = run_cli("customers", tiny, CUSTOMER_MAP, tiny_dir)
            print(f"CLI  fixed cost (1-row import): {secs:6.2f} s wall, CPU {cpu:5.2f} s; {_load()}", flush=True)
            rows_out.append(
                {
                    "metric": "import CLI fixed cost (1 row)",
                    "value": round(secs, 2),
                    "unit": "s",
                    "target": "-",
                    "met": None,
                    "note": f"CPU {cpu:.1f} s, {_load()}",
                }
            )
            d = work / "cli-data"
            create_workspace(d, "bench")
            for kind, path, mapping in jobs:
                secs, cpu, line = run_cli(kind, path, mapping, d)
                print(
                    f"CLI  {kind:9s}: {secs:7.2f} s -> {n / secs:10,.0f} rows/s; CPU {cpu:6.2f} s -> "
                    f"{n / cpu if cpu else 0:10,.0f} rows/CPU-s; {_load()}   [{line}]",
                    flush=True,
                )
                rows_out.append(
                    {
                        "metric": f"import {kind} (CLI)",
                        "value": round(n / secs),
                        "unit": "rows/s",
                        "target": f">= {TARGET_ROWS_S:,}",
                        "met": n / secs >= TARGET_ROWS_S,
                        "note": f"{n:,} rows, {secs:.1f} s, CPU {cpu:.1f} s, {_load()}",
                    }
                )

        if args.mode in ("both", "inproc"):
            from goldkey.runtime import Goldkey
            from goldkey.settings import Settings

            instrument()
            for rep in range(max(1, args.repeat)):
                with _postgres_database(args.postgres) as url:
                    gk = Goldkey.open(Settings(data_dir=work / f"inproc-data-{rep}", operational_url=url))
                    try:
                        ws = gk.workspaces.create("bench").workspace_id
                        for kind, path, mapping in jobs:
                            rows_out += _inproc(gk, ws, kind, path, mapping, n)
                    finally:
                        gk.close()
    emit_summary("import", rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
