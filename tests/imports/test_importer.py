"""Imports through the real importer and API: cleaning, quarantine, idempotent re-imports, order
summaries on the profile, and old vs new customers."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import polars as pl
import pytest

CRM_MAPPING = {
    "会员编号": "crm_id",
    "手机号": "phone",
    "邮箱": "email",
    "姓名": "name",
    "省份": "region",
    "注册时间": "registered_at",
    "会员等级": "member_tier",
}


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def crm_file(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "crm.csv",
        ["会员编号", "手机号", "邮箱", "姓名", "省份", "注册时间", "会员等级", "备注"],
        [
            ["C001", "139 1234 5678", "Wang@Example.com", "王芳", "广东", "2023/3/1", "gold", "老客户"],
            ["C002", "+86-138-0013-9999", "", "李雷", "Beijing", "2023年5月2日", "silver", ""],
            ["C003", "12345", "", "坏号码", "上海", "2023-01-01", "", ""],  # invalid phone
            ["C004", "13700001111", "not-an-email", "坏邮箱", "上海", "2023-01-01", "", ""],  # invalid e-mail
            ["", "", "", "无标识", "上海", "2023-01-01", "", ""],  # no identifier
            ["C001", "13912345678", "wang@example.com", "王芳", "广东省", "2023-03-01", "gold", "老客户"],  # duplicate
        ],
    )


def lookup(env: Any, **q: str) -> dict[str, Any]:
    r = env.client.get("/api/v1/profiles/lookup", params=q, headers=env.admin_auth())
    assert r.status_code == 200, r.text
    return r.json()


def test_customer_import_cleans_quarantines_and_is_idempotent(env_any: Any, tmp_path: Path) -> None:
    env = env_any
    f = crm_file(tmp_path)
    s = env.gk.importer.run(env.ws.workspace_id, "customers", f, CRM_MAPPING)
    assert (s.rows_read, s.accepted, s.quarantined, s.duplicates_merged) == (6, 2, 3, 1)
    p = lookup(env, phone="13912345678")
    assert p["origin"] == "existing"
    assert p["attributes"]["name"] == "王芳" and p["attributes"]["region"] == "广东省"
    assert p["attributes"]["备注"] == "老客户"  # unmapped columns are kept, not lost
    assert {"type": "email", "value": "wang@example.com"}.items() <= next(
        i for i in p["identities"] if i["type"] == "email"
    ).items()
    assert p["first_seen_at"].startswith("2023-02-28T16:00") or p["first_seen_at"].startswith("2023-03-01")
    assert lookup(env, phone="13800139999")["attributes"]["region"] == "北京市"

    q = env.client.get("/api/v1/quarantine", params={"import_id": s.import_id}, headers=env.admin_auth()).json()
    by_field = {r["field"]: r for r in q}
    assert set(by_field) == {"phone", "email", "identifier"}
    raw = by_field["phone"]["raw"]
    assert raw.get("会员编号", raw.get("crm_id")) == "C003" and by_field["phone"]["record"] == "3"
    assert "12345" in (by_field["phone"]["value"] or "") or "12345" in by_field["phone"]["reason"]

    again = env.gk.importer.run(env.ws.workspace_id, "customers", f, CRM_MAPPING)
    assert again.status == "unchanged" and again.import_id == s.import_id
    forced = env.gk.importer.run(env.ws.workspace_id, "customers", f, CRM_MAPPING, force=True)
    assert forced.status == "done" and forced.accepted == 2
    assert lookup(env, crm_id="C001")["profile_id"] == p["profile_id"]


def test_wechat_binding_matching_crm_is_an_existing_customer(env: Any, tmp_path: Path) -> None:
    env.gk.importer.run(env.ws.workspace_id, "customers", crm_file(tmp_path), CRM_MAPPING)
    r = env.post(
        "/v1/identify",
        {"userId": "wx-user-1", "messageId": "b1", "traits": {"phone": "13912345678", "wechat_openid": "oWX123"}},
    )
    assert r.status_code == 200
    bound = lookup(env, wechat_openid="oWX123")
    assert bound["profile_id"] == lookup(env, crm_id="C001")["profile_id"]
    assert bound["origin"] == "existing"
    env.post(
        "/v1/identify",
        {"userId": "wx-user-2", "messageId": "b2", "traits": {"phone": "13655556666", "wechat_openid": "oWX999"}},
    )
    assert lookup(env, wechat_openid="oWX999")["origin"] == "new"


def test_orders_give_an_order_summary_without_double_counting(env_any: Any, tmp_path: Path) -> None:
    env = env_any
    env.gk.importer.run(env.ws.workspace_id, "customers", crm_file(tmp_path), CRM_MAPPING)
    orders = write_csv(
        tmp_path / "orders.csv",
        ["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price", "channel"],
        [
            ["O1", "2024-01-05 10:00", "C001", "LENS-A", "lens", "2", "¥99.50", "store"],
            ["O1", "2024-01-05 10:00", "C001", "SOL-1", "solution", "1", "39", "store"],
            ["O2", "2024-03-01 09:00", "C001", "SOL-1", "solution", "1", "39", "online"],
            ["O3", "2024-03-02 09:00", "C002", "LENS-B", "lens", "1", "120", "online"],
            ["O4", "not a date", "C002", "LENS-B", "lens", "1", "120", "online"],
        ],
    )
    s = env.gk.importer.run(env.ws.workspace_id, "orders", orders, {})
    assert (s.rows_read, s.quarantined) == (5, 1)
    summary = lookup(env, crm_id="C001")["order_summary"]
    assert summary["orders"] == 2 and summary["revenue"] == round(2 * 99.5 + 39 + 39, 2)
    assert summary["skus"] == ["LENS-A", "SOL-1"] and summary["categories"] == ["lens", "solution"]
    env.gk.importer.run(env.ws.workspace_id, "orders", orders, {}, force=True)
    assert lookup(env, crm_id="C001")["order_summary"]["orders"] == 2
    n = env.gk.analytical.query("SELECT count(*) FROM orders WHERE workspace_id = ?", [env.ws.workspace_id])[0][0]
    assert n == 3

    # a merge adds the two customers' orders once each; undoing it splits them again
    env.post("/v1/identify", {"messageId": "x1", "userId": "shared", "traits": {"crm_id": "C001"}})
    r = env.post("/v1/identify", {"messageId": "x2", "userId": "shared", "traits": {"phone": "13800139999"}})
    assert r.status_code == 200
    # C002's profile holds a crm_id already: merging would give two crm_ids, so it is refused
    assert lookup(env, crm_id="C001")["order_summary"]["orders"] == 2


def test_the_order_summary_counts_purchases_and_keeps_currencies_apart(env_any: Any, tmp_path: Path) -> None:
    # a refund and a cancelled order are no purchases (as in every model): before, this customer
    # showed 4 orders and 619.00 of "revenue", the cancelled frames' 500 included and their category
    # "bought"; amounts in two currencies are also given per currency
    env = env_any
    env.gk.importer.run(env.ws.workspace_id, "customers", crm_file(tmp_path), CRM_MAPPING)
    orders = write_csv(
        tmp_path / "orders.csv",
        ["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price", "currency", "status"],
        [
            ["P1", "2024-01-10 10:00", "C001", "SKU-A", "lens", "1", "100", "CNY", "paid"],
            ["P2", "2024-02-10 10:00", "C001", "SKU-A", "lens", "-1", "100", "CNY", "退款"],
            ["P3", "2024-05-01 10:00", "C001", "SKU-F", "frames", "1", "500", "CNY", "Cancelled"],
            ["P4", "2024-03-01 10:00", "C001", "SKU-B", "solution", "1", "20", "usd", "paid"],
            ["Q1", "2024-03-02 09:00", "C002", "SKU-B", "solution", "1", "39", "", "已取消"],
        ],
    )
    assert env.gk.importer.run(env.ws.workspace_id, "orders", orders, {}).quarantined == 0
    s = lookup(env, crm_id="C001")["order_summary"]
    assert (s["orders"], s["revenue"], s["refunds"], s["cancellations"]) == (2, 120.0, 1, 1)
    assert s["revenue_by_currency"] == {"CNY": 100.0, "USD": 20.0}
    assert (s["first_order_at"], s["last_order_at"]) == ("2024-01-10T02:00:00+00:00", "2024-03-01T02:00:00+00:00")
    assert (s["skus"], s["categories"]) == (["SKU-A", "SKU-B"], ["lens", "solution"])
    # a customer whose only order was cancelled has bought nothing
    s2 = lookup(env, crm_id="C002")["order_summary"]
    assert (s2["orders"], s2["revenue"], s2["cancellations"], s2["skus"], s2["first_order_at"]) == (0, 0.0, 1, [], None)
    overview = env.client.get("/api/v1/console/overview", params={"as_of": "2024-06-01T00:00:00Z", "days": 366},
                              headers=env.admin_auth()).json()
    assert (overview["orders_all_time"], overview["revenue_all_time"]) == (2, 120.0)


def test_an_orders_import_dates_last_seen_by_the_latest_order(env_any: Any, tmp_path: Path) -> None:
    # before: a profile the import created was last seen at the first of its rows in the file
    env = env_any
    rows = [[o, at, crm, "S", "lens", "1", "10"] for o, at, crm in (
        ("O1", "2024-01-01 10:00", "N1"), ("O2", "2025-06-01 10:00", "N1"),
        ("O3", "2025-06-01 10:00", "N2"), ("O4", "2024-01-01 10:00", "N2"))]
    f = write_csv(tmp_path / "o.csv", ["order_id", "ordered_at", "crm_id", "sku", "category", "quantity", "unit_price"],
                  rows)
    assert env.gk.importer.run(env.ws.workspace_id, "orders", f, {}).quarantined == 0
    for crm in ("N1", "N2"):
        p = lookup(env, crm_id=crm)
        assert p["first_seen_at"].startswith("2024-01-01T02:00:00"), p
        assert p["last_seen_at"].startswith("2025-06-01T02:00:00"), p


def test_import_through_api_with_parquet_and_excel(env: Any, tmp_path: Path) -> None:
    products = tmp_path / "products.parquet"
    pl.DataFrame(
        {
            "sku": ["LENS-A", "SOL-1"],
            "name": ["日抛隐形眼镜", "护理液 360ml"],
            "category": ["lens", "solution"],
            "price": [99.5, 39.0],
        }
    ).write_parquet(products)
    r = env.client.post(
        "/api/v1/imports",
        headers=env.admin_auth(),
        files={"file": ("products.parquet", products.read_bytes())},
        data={"kind": "products"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["quarantined"]) == (2, 0)

    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["编号", "手机", "类型", "内容", "时间"])
    ws.append(["F1", "13912345678", "投诉", "物流太慢了", "2024-05-01 10:00"])
    ws.append(["F2", "13912345678", "unknown-kind", "?", "2024-05-02 10:00"])
    buf = io.BytesIO()
    wb.save(buf)
    mapping = '{"编号": "feedback_id", "手机": "phone", "类型": "kind", "内容": "text", "时间": "created_at"}'
    r = env.client.post(
        "/api/v1/imports",
        headers=env.admin_auth(),
        files={"file": ("fb.xlsx", buf.getvalue())},
        data={"kind": "feedback", "mapping": mapping},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["accepted"], r.json()["quarantined"]) == (1, 1)
    p = lookup(env, phone="13912345678")
    assert p["feedback"][0]["kind"] == "complaint" and p["feedback"][0]["text"] == "物流太慢了"

    bad = env.client.post(
        "/api/v1/imports",
        headers=env.admin_auth(),
        files={"file": ("x.csv", b"a,b\n1,2\n")},
        data={"kind": "customers", "mapping": '{"a": "nope"}'},
    )
    assert bad.status_code == 400 and "nope" in bad.json()["error"]
    unknown = env.client.post(
        "/api/v1/imports", headers=env.admin_auth(), files={"file": ("x.csv", b"a\n1\n")}, data={"kind": "stuff"}
    )
    assert unknown.status_code == 400 and unknown.json()["field"] == "kind"
    # a file that cannot be read is named as uploaded, not as the server's temporary copy
    empty = env.client.post("/api/v1/imports", headers=env.admin_auth(), files={"file": ("会员.csv", b"")},
                            data={"kind": "customers"})
    assert empty.status_code == 400 and empty.json()["field"] == "file"
    assert "会员.csv" in empty.json()["error"] and "upload" not in empty.json()["error"]


def test_reimported_order_that_changed_hands_leaves_the_old_owner(env: Any, tmp_path: Path) -> None:
    env.gk.importer.run(env.ws.workspace_id, "customers", crm_file(tmp_path), CRM_MAPPING)
    header = ["order_id", "ordered_at", "crm_id", "sku", "unit_price"]
    first = write_csv(tmp_path / "o1.csv", header, [["O1", "2024-01-01", "C001", "S1", "10"]])
    env.gk.importer.run(env.ws.workspace_id, "orders", first, {})
    assert lookup(env, crm_id="C001")["order_summary"]["orders"] == 1
    fixed = write_csv(tmp_path / "o2.csv", header, [["O1", "2024-01-01", "C002", "S1", "10"]])
    env.gk.importer.run(env.ws.workspace_id, "orders", fixed, {})
    assert lookup(env, crm_id="C001")["order_summary"].get("orders", 0) == 0
    assert lookup(env, crm_id="C002")["order_summary"]["orders"] == 1


def test_rows_sharing_only_a_blocked_value_are_different_customers(env: Any, tmp_path: Path) -> None:
    # before: the in-file de-duplication keyed rows on their first identifier even when it was a
    # blocked placeholder ("N/A", the shop's counter phone): Alice and Bob became one row, Bob's
    # phone and e-mail won, and Alice (and Dan) vanished without a quarantine entry
    f = write_csv(tmp_path / "blocked.csv", ["crm_id", "phone", "email", "name"], [
        ["N/A", "13912345678", "alice@x.com", "Alice"],
        ["N/A", "13912345679", "bob@x.com", "Bob"],
        ["", "13800138000", "dan@x.com", "Dan"],  # the counter phone, blocked by default
        ["", "138 0013 8000", "eve@x.com", "Eve"],
        ["C9", "13700001111", "", "Carl"],
        ["C9", "", "carl@x.com", ""],  # a real duplicate is still merged
    ])
    s = env.gk.importer.run(env.ws.workspace_id, "customers", f, {})
    assert (s.rows_read, s.accepted, s.quarantined, s.duplicates_merged) == (6, 5, 0, 1), s
    for name, q in (("Alice", {"email": "alice@x.com"}), ("Bob", {"phone": "13912345679"}),
                    ("Dan", {"email": "dan@x.com"}), ("Eve", {"email": "eve@x.com"})):
        assert lookup(env, **q)["attributes"]["name"] == name
    assert lookup(env, email="alice@x.com")["profile_id"] != lookup(env, email="bob@x.com")["profile_id"]
    carl = lookup(env, crm_id="C9")
    assert carl["attributes"]["name"] == "Carl" and carl["profile_id"] == lookup(env, email="carl@x.com")["profile_id"]


def test_reimport_keeps_what_the_new_file_does_not_carry(env_any: Any, tmp_path: Path) -> None:
    # before: a price list re-imported with only sku,name,price wiped each product's category, brand
    # and QR code; a feedback file without text or status wiped the text and reopened the case
    import sqlalchemy as sa

    from goldkey.store.operational import feedback, products

    env, ws = env_any, env_any.ws.workspace_id
    run = env.gk.importer.run
    full = write_csv(tmp_path / "p_full.csv", ["sku", "name", "category", "brand", "price", "qr_code"],
                     [["S1", "Lens A", "lens", "Acme", "199", "QR1"], ["S2", "Drops", "care", "Acme", "30", "QR2"]])
    assert run(ws, "products", full, {}).accepted == 2
    price = write_csv(tmp_path / "p_price.csv", ["sku", "name", "price", "brand"],
                      [["S1", "Lens A", "179", "Acme"], ["S2", "Drops", "28", ""], ["S3", "New", "9", ""]])
    assert run(ws, "products", price, {}).accepted == 3
    with env.gk.engine.connect() as c:
        got = {r.sku: r for r in c.execute(sa.select(products).where(products.c.workspace_id == ws))}
    assert (got["S1"].name, got["S1"].category, got["S1"].brand, got["S1"].price, got["S1"].qr_code) == (
        "Lens A", "lens", "Acme", 179.0, "QR1")
    assert (got["S2"].brand, got["S2"].price, got["S2"].qr_code) == ("Acme", 28.0, "QR2")  # empty cells erase nothing
    assert (got["S3"].name, got["S3"].category) == ("New", None)

    fb = write_csv(tmp_path / "fb.csv", ["feedback_id", "crm_id", "kind", "created_at", "topic", "text", "rating",
                                         "status"],
                   [["F1", "C1", "complaint", "2025-03-01", "delivery", "Parcel arrived broken", "1", "resolved"]])
    assert run(ws, "feedback", fb, {}).accepted == 1
    again = write_csv(tmp_path / "fb2.csv", ["feedback_id", "crm_id", "kind", "created_at", "rating"],
                      [["F1", "C1", "complaint", "2025-03-01", "2"]])
    assert run(ws, "feedback", again, {}).accepted == 1
    with env.gk.engine.connect() as c:
        r = c.execute(sa.select(feedback).where(feedback.c.workspace_id == ws)).one()
    assert (r.topic, r.text, r.rating, r.status) == ("delivery", "Parcel arrived broken", 2, "resolved")


def test_an_orders_import_that_fails_leaves_no_orders_behind(env: Any, tmp_path: Path, monkeypatch: Any) -> None:
    # before: the orders were committed to the analytical store inside the still-open operational
    # transaction; a failure after that left them owned by profiles that were never created
    from goldkey.collect import importer as importer_mod

    ws = env.ws.workspace_id
    f = write_csv(tmp_path / "o.csv", ["order_id", "crm_id", "ordered_at", "sku", "line_amount"],
                  [["O1", "NEW1", "2025-03-01", "S1", "10"], ["O2", "NEW2", "2025-03-02", "S2", "20"]])
    original = importer_mod.refresh_order_summaries

    def fail_late(*args: Any, **kwargs: Any) -> None:  # fault injection after the orders were written
        original(*args, **kwargs)
        raise RuntimeError("injected failure after the analytical writes")

    monkeypatch.setattr(importer_mod, "refresh_order_summaries", fail_late)
    try:
        env.gk.importer.run(ws, "orders", f, {})
        raise AssertionError("the import should have failed")
    except RuntimeError as exc:
        assert "injected" in str(exc)
    monkeypatch.setattr(importer_mod, "refresh_order_summaries", original)
    assert env.gk.analytical.query("SELECT count(*) FROM orders WHERE workspace_id = ?", [ws]) == [(0,)]
    assert env.gk.analytical.query("SELECT count(*) FROM order_lines WHERE workspace_id = ?", [ws]) == [(0,)]
    r = env.client.get("/api/v1/profiles/lookup", params={"crm_id": "NEW1"}, headers=env.admin_auth())
    assert r.status_code == 404
    listed = env.client.get("/api/v1/imports", headers=env.admin_auth()).json()
    assert [i["status"] for i in listed] == ["failed"]
    # run again: it all lands, once
    s = env.gk.importer.run(ws, "orders", f, {})
    assert (s.status, s.accepted) == ("done", 2)
    assert lookup(env, crm_id="NEW1")["order_summary"]["orders"] == 1
    assert env.gk.analytical.query("SELECT count(*) FROM orders WHERE workspace_id = ?", [ws]) == [(2,)]


def test_an_orders_import_whose_analytical_commit_fails_is_failed_not_done(env: Any, tmp_path: Path,
                                                                           monkeypatch: Any) -> None:
    # the analytical transaction commits after the operational one: should it fail, the import must
    # not stand as done with its orders missing
    from contextlib import contextmanager

    ws, an = env.ws.workspace_id, env.gk.analytical
    f = write_csv(tmp_path / "o.csv", ["order_id", "crm_id", "ordered_at", "sku", "line_amount"],
                  [["O1", "NEW1", "2025-03-01", "S1", "10"]])
    original = an.transaction

    @contextmanager
    def commit_fails() -> Any:  # fault injection: the body runs, then the commit fails (rolled back)
        with original() as con:
            yield con
            con.execute("ROLLBACK")
            con.execute("BEGIN TRANSACTION")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(an, "transaction", commit_fails)
    try:
        env.gk.importer.run(ws, "orders", f, {})
        raise AssertionError("the import should have failed")
    except OSError:
        pass
    monkeypatch.setattr(an, "transaction", original)
    assert [i["status"] for i in env.client.get("/api/v1/imports", headers=env.admin_auth()).json()] == ["failed"]
    assert an.query("SELECT count(*) FROM orders WHERE workspace_id = ?", [ws]) == [(0,)]
    s = env.gk.importer.run(ws, "orders", f, {})
    assert (s.status, s.accepted) == ("done", 1)
    assert lookup(env, crm_id="NEW1")["order_summary"]["orders"] == 1


def test_a_value_too_long_for_its_column_is_quarantined_on_both_stores(env_any: Any, tmp_path: Path) -> None:
    # before, on PostgreSQL: one 400-character product name failed the whole import (a 500, nothing
    # written); on SQLite it was stored past the column's length
    env, ws = env_any, env_any.ws.workspace_id
    f = write_csv(tmp_path / "p.csv", ["sku", "name", "category"],
                  [["S1", "Lens", "lens"], ["S2", "x" * 400, "lens"], ["S3", "Drops", "c" * 150]])
    s = env.gk.importer.run(ws, "products", f, {})
    assert (s.status, s.rows_read, s.accepted, s.quarantined) == ("done", 3, 1, 2), s
    q = env.client.get("/api/v1/quarantine", params={"import_id": s.import_id}, headers=env.admin_auth()).json()
    items = q["items"] if isinstance(q, dict) else q
    assert sorted((i["record"], i["field"]) for i in items) == [("2", "name"), ("3", "category")]
    assert all("at most" in i["reason"] for i in items)
    fb = write_csv(tmp_path / "f.csv", ["feedback_id", "crm_id", "kind", "created_at", "topic"],
                   [["F1", "C1", "review", "2025-01-01", "t" * 250], ["F2", "C1", "review", "2025-01-01", "ok"]])
    s = env.gk.importer.run(ws, "feedback", fb, {})
    assert (s.status, s.accepted, s.quarantined) == ("done", 1, 1), s


@pytest.mark.parametrize(("kind", "text", "first"), [
    ("orders", "order_id,phone,ordered_at,sku,line_amount\nO1,13912345678,2024-01-10,LENS,300\n",
     "2024-01-09T16:00:00Z"),
    ("feedback", "feedback_id,phone,kind,text,created_at\nF1,13912345678,complaint,lens broke,2023-05-01\n",
     "2023-04-30T16:00:00Z"),
], ids=["orders", "feedback"])
def test_an_order_or_feedback_import_tells_old_customers_apart_whichever_came_first(
        env_any: Any, tmp_path: Path, kind: str, text: str, first: str) -> None:
    """A 2024 store order (or a 2023 complaint) by phone P and a 2025 app sign-up with phone P: the
    customer is an existing one, first seen at the record, whether the import or the app came first.
    Before, app first gave a "new" customer first seen in 2025 holding a 2024 order."""
    env = env_any
    ws = env.ws.workspace_id
    path = tmp_path / f"{kind}.csv"
    path.write_text(text, encoding="utf-8")
    r = env.post("/v1/identify", {"userId": "u1", "messageId": "m1", "traits": {"phone": "13912345678"},
                                  "timestamp": "2025-03-01T00:00:00Z"})
    assert r.status_code == 200
    assert lookup(env, user_id="u1")["origin"] == "new"
    s = env.gk.importer.run(ws, kind, path, {})
    assert s.status == "done" and s.accepted == 1, s
    p = lookup(env, user_id="u1")
    assert (p["origin"], p["first_seen_at"], p["first_seen_source"]) == ("existing", first, f"import:{kind}")
    # a later record does not move the first-seen time
    later = tmp_path / f"{kind}-later.csv"
    later.write_text(text.replace("O1", "O2").replace("F1", "F2").replace("2024-01-10", "2025-09-01")
                     .replace("2023-05-01", "2025-09-01"), encoding="utf-8")
    assert env.gk.importer.run(ws, kind, later, {}).accepted == 1
    assert lookup(env, user_id="u1")["first_seen_at"] == first


def test_a_placeholder_phone_or_email_does_not_lose_the_customer(env_any: Any, tmp_path: Path) -> None:
    """CRM exports hold "unknown", "n/a", "-" or "0" where a contact is missing: the identity rules
    block them, and the import reads them as empty instead of quarantining the customer."""
    env = env_any
    rows = [["C1", "unknown", "Ann"], ["C2", "n/a", "Bo"], ["C3", "-", "Cy"], ["C4", "ok@example.com", "Di"]]
    path = write_csv(tmp_path / "crm.csv", ["crm_id", "email", "name"], rows)
    phones = write_csv(tmp_path / "crm2.csv", ["crm_id", "phone", "name"], [["C5", "0", "Ed"], ["C6", "NONE", "Fa"]])
    only = write_csv(tmp_path / "crm3.csv", ["phone", "name"], [["unknown", "Gu"]])
    ws = env.ws.workspace_id
    for f, n in ((path, 4), (phones, 2)):
        s = env.gk.importer.run(ws, "customers", f, {})
        assert (s.accepted, s.quarantined) == (n, 0), s
    for c, name in (("C1", "Ann"), ("C3", "Cy"), ("C5", "Ed")):
        p = lookup(env, crm_id=c)
        assert p["attributes"]["name"] == name and {i["type"] for i in p["identities"]} == {"crm_id"}
    assert lookup(env, email="ok@example.com")["attributes"]["name"] == "Di"
    s = env.gk.importer.run(ws, "customers", only, {})  # the placeholder was its only identifier
    assert (s.accepted, s.quarantined) == (0, 1), s


def test_a_groups_column_cannot_overwrite_the_group_memberships(env: Any, tmp_path: Path) -> None:
    """``$groups`` holds what group calls record; a customers file's unmapped column of that name
    would have become the attribute (and broke the undo of a later merge with a 500)."""
    path = write_csv(tmp_path / "crm.csv", ["crm_id", "name", "$groups"], [["C1", "Ann", "vip"]])
    from goldkey.collect.reading import MappingError
    from goldkey.core.errors import GoldkeyError

    with pytest.raises((MappingError, GoldkeyError), match=r"\$groups"):
        env.gk.importer.run(env.ws.workspace_id, "customers", path, {})
    s = env.gk.importer.run(env.ws.workspace_id, "customers", path, {"$groups": ""})  # left out: fine
    assert s.status == "done" and s.accepted == 1, s


def test_a_bulk_import_refreshes_postgresql_statistics(env_any: Any, tmp_path: Path) -> None:
    """On PostgreSQL a bulk import ANALYZEs the tables it grew: the planner's estimates otherwise stay
    at the empty tables' until autovacuum runs (never where it is off), and a trigger's reservation
    query planned for "1 row" took seconds. SQLite has nothing to refresh."""
    from goldkey.collect.importer import ANALYZE_AFTER_ROWS

    path = tmp_path / "crm.csv"
    path.write_text("crm_id,phone\n" + "".join(f"C{i},139{i:08d}\n" for i in range(ANALYZE_AFTER_ROWS + 5)),
                    encoding="utf-8")
    s = env_any.gk.importer.run(env_any.ws.workspace_id, "customers", path, {})
    assert s.status == "done" and s.accepted == ANALYZE_AFTER_ROWS + 5, s
    engine = env_any.gk.engine
    if engine.dialect.name != "postgresql":
        return
    with engine.connect() as c:  # pg_class.reltuples is -1 until a table is first analysed (PostgreSQL 14+)
        estimate = dict(c.exec_driver_sql(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('profiles', 'identities', 'consents') "
            "AND relkind = 'r'").all())
    assert estimate["profiles"] >= ANALYZE_AFTER_ROWS and estimate["identities"] >= ANALYZE_AFTER_ROWS, estimate
    assert estimate["consents"] >= 0, estimate
