"""Tests of goldkey.collect.reading: files in, all-text frames out, column mapping."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import openpyxl
import polars as pl
import pytest

from goldkey.collect.cleaning import clean
from goldkey.collect.import_schemas import EXTRA, RECORD, SCHEMAS
from goldkey.collect.reading import (
    ImportFileError,
    MappingError,
    apply_mapping,
    file_digest,
    read_table,
    unmapped_columns,
)

CUSTOMERS = SCHEMAS["customers"]
ORDERS = SCHEMAS["orders"]


def all_text(df: pl.DataFrame) -> bool:
    return all(dtype == pl.Utf8 for name, dtype in df.schema.items() if name != RECORD)


# ---------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------


def test_utf8_csv_all_text_with_record_first(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("crm_id,phone,points\nC001,13800138000,0012\nC002,,5\n", encoding="utf-8")
    df = read_table(path)
    assert df.columns == [RECORD, "crm_id", "phone", "points"]
    assert df.schema[RECORD] == pl.Int64
    assert all_text(df)
    assert df.rows() == [(1, "C001", "13800138000", "0012"), (2, "C002", None, "5")]


def test_bom_csv(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("客户编号,姓名\nC1,张三\n".encode("utf-8-sig"))
    df = read_table(path)
    assert df.columns == [RECORD, "客户编号", "姓名"]
    assert df.row(0) == (1, "C1", "张三")


@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
def test_gbk_csv(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("客户编号,姓名,省份\nC1,张三,广东省\nC2,李四,北京\n".encode(encoding))
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")
    df = read_table(path)
    assert df.columns == [RECORD, "客户编号", "姓名", "省份"]
    assert df["姓名"].to_list() == ["张三", "李四"]
    assert df["省份"].to_list() == ["广东省", "北京"]


def test_gbk_csv_with_an_ascii_header(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("crm_id,name,city\nC1,张三,广东省\nC2,李四,北京\n".encode("gbk"))
    assert read_table(path)["name"].to_list() == ["张三", "李四"]


def test_utf8_csv_with_one_damaged_character_is_refused_not_garbled(tmp_path: Path) -> None:
    # before: the whole file was read again as GB18030: accepted, every Chinese value mojibake
    good = "crm_id,name,city,备注\nC1,王芳,广州,老客\nC2,李雷,北京,金卡会员\n".encode()
    path = tmp_path / "cut.csv"
    path.write_bytes(good + "C3,张".encode() + "伟".encode()[:1] + ",上海,\n".encode())
    with pytest.raises(ImportFileError, match="invalid UTF-8 at line 4"):
        read_table(path)


def test_utf16_csv_with_tabs(tmp_path: Path) -> None:
    path = tmp_path / "u16.txt"
    path.write_bytes("a\tb\r\n1\t二\r\n".encode("utf-16"))
    df = read_table(path)
    assert df.rows() == [(1, "1", "二")]


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_separator_is_sniffed(tmp_path: Path, sep: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(f"a{sep}b{sep}c\n1{sep}2,5{sep}x\n", encoding="utf-8")
    df = read_table(path)
    assert df.columns == [RECORD, "a", "b", "c"]
    assert df.row(0) == (1, "1", "2,5", "x")


def test_csv_quotes_crlf_and_leading_zeros_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(b'id,amount,note\r\n007,"1,299.00","a, ""b"""\r\n')
    df = read_table(path)
    assert df.row(0) == (1, "007", "1,299.00", 'a, "b"')


def test_csv_headers_are_stripped_and_made_unique(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text(" name ,name,\nA,B,C\n", encoding="utf-8")
    df = read_table(path)
    assert df.columns[0] == RECORD
    assert df.columns[1:3] == ["name", "name_2"]
    assert len(set(df.columns)) == 4
    # repeated exactly, and two empty ones (before: polars' own "name_duplicated_0" names)
    path.write_text("crm_id,name,name,,\nC1,a,b,x,y\n", encoding="utf-8")
    assert read_table(path).columns == [RECORD, "crm_id", "name", "name_2", "column_4", "column_5"]
    path.write_bytes("编号,姓名,姓名\nC1,甲,乙\n".encode("gbk"))
    assert read_table(path).columns == [RECORD, "编号", "姓名", "姓名_2"]


def test_parquet_duration_column_is_read_as_seconds(tmp_path: Path) -> None:
    # before: any Duration column, mapped or not, made the file unreadable
    import datetime as _dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"crm_id": ["C1", "C2", "C3"], "session": pa.array(
        [_dt.timedelta(seconds=5), _dt.timedelta(milliseconds=1500), None], pa.duration("ms"))}), path)
    assert read_table(path)["session"].to_list() == ["5", "1.5", None]


def test_ragged_rows(tmp_path: Path) -> None:
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("a,b\n1,2,\n3,4,\n", encoding="utf-8")
    assert read_table(trailing).rows() == [(1, "1", "2"), (2, "3", "4")]
    shifted = tmp_path / "shifted.csv"
    shifted.write_text("name,amount\nA,1\nB,1,299.00\n", encoding="utf-8")
    with pytest.raises(ImportFileError, match=r"shifted\.csv: record 2 has 3 fields but the header has 2"):
        read_table(shifted)
    short = tmp_path / "short.csv"
    short.write_text("a,b,c\n1,2\n", encoding="utf-8")
    assert read_table(short).rows() == [(1, "1", "2", None)]


def test_empty_and_binary_files_are_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ImportFileError, match="empty.csv"):
        read_table(empty)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\x00\x81\x00" * 100)
    with pytest.raises(ImportFileError, match="bin.csv"):
        read_table(binary)


# ---------------------------------------------------------------------------
# Excel
# ---------------------------------------------------------------------------


def write_xlsx(path: Path, rows: list[list[object]], title: str = "Sheet1", extra_sheet: str | None = None) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = title
    for row in rows:
        ws.append(row)
    if extra_sheet:
        ws2 = wb.create_sheet(extra_sheet)
        ws2.append(["sku", "name"])
        ws2.append(["S1", "手机"])
    wb.save(path)


def test_xlsx_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "customers.xlsx"
    write_xlsx(
        path,
        [
            ["crm_id", "手机", "积分", "余额", "生日", "注册时间", "VIP", None],
            ["C1", 13800138000, 12, 1299.5, dt.datetime(1990, 3, 1), dt.datetime(2025, 3, 1, 12, 30), True, None],
            [None, None, None, None, None, None, None, None],  # blank row: counted, not kept
            ["C3", "138 0013 8000", 7.0, 0.1, dt.date(1991, 1, 2), None, False, "x"],
        ],
    )
    df = read_table(path)
    assert all_text(df)
    assert df.columns == [RECORD, "crm_id", "手机", "积分", "余额", "生日", "注册时间", "VIP", "column_8"]
    assert df.rows() == [
        (1, "C1", "13800138000", "12", "1299.5", "1990-03-01", "2025-03-01 12:30:00", "true", None),
        (3, "C3", "138 0013 8000", "7", "0.1", "1991-01-02", None, "false", "x"),
    ]


def test_xlsx_sheet_selection(tmp_path: Path) -> None:
    path = tmp_path / "book.xlsx"
    write_xlsx(path, [["crm_id"], ["C1"]], extra_sheet="商品")
    assert read_table(path)["crm_id"].to_list() == ["C1"]
    products = read_table(path, sheet="商品")
    assert products.rows() == [(1, "S1", "手机")]
    with pytest.raises(ImportFileError, match="商品") as err:
        read_table(path, sheet="nope")
    assert "nope" in str(err.value) and "book.xlsx" in str(err.value)


def test_xlsx_is_detected_by_content(tmp_path: Path) -> None:
    path = tmp_path / "renamed.csv"
    write_xlsx(path, [["a"], ["1"]])
    assert read_table(path).rows() == [(1, "1")]


def test_xlsx_end_to_end_clean(tmp_path: Path) -> None:
    path = tmp_path / "c.xlsx"
    write_xlsx(
        path,
        [
            ["编号", "手机", "生日"],
            ["C1", 13800138000, dt.datetime(1990, 3, 1)],
            ["C2", 12345, None],
        ],
    )
    df = apply_mapping(read_table(path), {"编号": "crm_id", "手机": "phone", "生日": "birthday"}, CUSTOMERS)
    result = clean(df, CUSTOMERS)
    assert result.accepted["phone"].to_list() == ["+8613800138000"]
    assert result.accepted["birthday"].to_list() == [dt.date(1990, 3, 1)]
    assert [(r.record, r.field, r.value) for r in result.rejected] == [(2, "phone", "12345")]


# ---------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------


def test_parquet_typed_columns_become_text(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pl.DataFrame(
        {
            "id": pl.Series([1, 2], dtype=pl.Int64),
            "phone": pl.Series([13800138000.0, None], dtype=pl.Float64),
            "price": pl.Series([1299.5, 3.0], dtype=pl.Float64),
            "ok": pl.Series([True, False]),
            "day": pl.Series([dt.date(2025, 3, 1), None], dtype=pl.Date),
            "at": pl.Series(
                [dt.datetime(2025, 3, 1, 12, 30), dt.datetime(2025, 3, 1, 0, 0, 0, 500000)], dtype=pl.Datetime("us")
            ),
            "at_utc": pl.Series([dt.datetime(2025, 3, 1, 4, 30), None], dtype=pl.Datetime("us", "UTC")),
            "name": ["张三", None],
            "cat": pl.Series(["a", "b"], dtype=pl.Categorical),
            "dec": pl.Series(["1.50", "2.00"]).cast(pl.Decimal(10, 2)),
        }
    ).write_parquet(path)
    df = read_table(path)
    assert all_text(df)
    assert df.columns[0] == RECORD
    rows = df.to_dicts()
    assert rows[0]["id"] == "1"
    assert rows[0]["phone"] == "13800138000" and rows[1]["phone"] is None
    assert rows[0]["price"] == "1299.5" and rows[1]["price"] == "3"
    assert rows[0]["ok"] == "true"
    assert rows[0]["day"] == "2025-03-01" and rows[1]["day"] is None
    assert rows[0]["name"] == "张三" and rows[1]["name"] is None
    assert rows[0]["cat"] == "a"
    assert rows[0]["dec"] == "1.50"
    # and cleaning reads the timestamps back to the same instants
    frame = df.select(RECORD, pl.col("id").alias("crm_id"), pl.col("at").alias("registered_at"))
    got = clean(frame, CUSTOMERS).accepted["registered_at"].to_list()
    shanghai = dt.timedelta(hours=8)
    assert got == [
        (dt.datetime(2025, 3, 1, 12, 30) - shanghai).replace(tzinfo=dt.UTC),
        (dt.datetime(2025, 3, 1, 0, 0, 0, 500000) - shanghai).replace(tzinfo=dt.UTC),
    ]
    utc_frame = df.select(pl.col("id").alias("crm_id"), pl.col("at_utc").alias("registered_at"))
    assert clean(utc_frame, CUSTOMERS).accepted["registered_at"][0] == dt.datetime(2025, 3, 1, 4, 30, tzinfo=dt.UTC)


def test_a_zoned_parquet_timestamp_keeps_its_date_and_its_instant(tmp_path: Path) -> None:
    # before: a birthday written as a zoned midnight (what pandas/Spark write for a date column in
    # Asia/Shanghai) became '1989-12-31 16:00:00+00:00' and the row went to the quarantine
    path = tmp_path / "zoned.parquet"
    pl.DataFrame({
        "crm_id": ["C1"],
        "birthday": pl.Series([dt.datetime(1990, 1, 1)]).dt.replace_time_zone("Asia/Shanghai"),
        "registered_at": pl.Series([dt.datetime(2023, 3, 1, 8, 30)]).dt.replace_time_zone("Asia/Shanghai"),
    }).write_parquet(path)
    res = clean(read_table(path), CUSTOMERS)
    assert res.accepted.height == 1, res.rejections
    row = res.accepted.to_dicts()[0]
    assert str(row["birthday"]) == "1990-01-01"
    assert row["registered_at"] == dt.datetime(2023, 3, 1, 0, 30, tzinfo=dt.UTC)


# ---------------------------------------------------------------------------
# formats, errors and digests
# ---------------------------------------------------------------------------


def test_unknown_format_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(ImportFileError) as err:
        read_table(path)
    assert err.value.path == path
    assert "data.json" in str(err.value)
    with pytest.raises(ImportFileError, match="unknown format"):
        read_table(path, fmt="json")


def test_fmt_overrides_suffix(tmp_path: Path) -> None:
    path = tmp_path / "data.dat"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    assert read_table(path, fmt="csv").rows() == [(1, "1", "2")]


def test_missing_legacy_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="not found"):
        read_table(tmp_path / "missing.csv")
    xls = tmp_path / "old.xls"
    xls.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100)
    with pytest.raises(ImportFileError, match=r"old\.xls.*\.xls"):
        read_table(xls)
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ImportFileError, match="bad.xlsx"):
        read_table(bad)
    bad_pq = tmp_path / "bad.parquet"
    bad_pq.write_bytes(b"PAR1 nonsense")
    with pytest.raises(ImportFileError, match="bad.parquet"):
        read_table(bad_pq)


def test_import_file_error_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        read_table(tmp_path / "missing.csv")


def test_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"a,b\n1,2\n")
    assert file_digest(path) == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    other = tmp_path / "e.csv"
    other.write_bytes(b"a,b\n1,3\n")
    assert file_digest(other) != file_digest(path)


# ---------------------------------------------------------------------------
# mapping
# ---------------------------------------------------------------------------


def source() -> pl.DataFrame:
    return pl.DataFrame(
        {
            RECORD: [1, 2],
            "客户编号": ["C1", "C2"],
            "手机": ["13800138000", None],
            "email": ["a@b.cn", None],
            "Name": ["张三", "李四"],
            "会员卡号": ["V1", None],
            "备注": ["x", "y"],
        }
    )


def test_mapping_renames_and_takes_canonical_headers() -> None:
    df = apply_mapping(source(), {"客户编号": "crm_id", "手机": "phone"}, CUSTOMERS)
    assert df.columns == [RECORD, "crm_id", "phone", "email", "name", EXTRA]
    assert df["crm_id"].to_list() == ["C1", "C2"]
    assert df["name"].to_list() == ["张三", "李四"]  # "Name" matched case-insensitively
    assert df[EXTRA].to_list() == [{"会员卡号": "V1", "备注": "x"}, {"会员卡号": None, "备注": "y"}]


def test_unmapped_columns_reported_and_dropped_for_other_kinds() -> None:
    mapping = {"客户编号": "crm_id", "手机": "phone"}
    assert unmapped_columns(source(), mapping, ORDERS) == ["Name", "会员卡号", "备注"]
    assert unmapped_columns(source(), mapping, CUSTOMERS) == ["会员卡号", "备注"]
    df = apply_mapping(source(), mapping, ORDERS)
    assert df.columns == [RECORD, "crm_id", "phone", "email"]


def test_mapping_to_empty_string_drops_a_column() -> None:
    df = apply_mapping(source(), {"客户编号": "crm_id", "会员卡号": ""}, CUSTOMERS)
    assert df[EXTRA].to_list()[0] == {"手机": "13800138000", "备注": "x"}


def test_mapping_target_must_be_a_field() -> None:
    with pytest.raises(MappingError) as err:
        apply_mapping(source(), {"客户编号": "customer_no"}, CUSTOMERS)
    message = str(err.value)
    assert "customer_no" in message and "客户编号" in message
    assert "crm_id" in message and "balance" in message  # lists valid fields
    assert err.value.field == "customer_no"
    with pytest.raises(MappingError):
        apply_mapping(source(), {"客户编号": "extra"}, CUSTOMERS)


def test_mapped_column_must_exist() -> None:
    with pytest.raises(MappingError) as err:
        apply_mapping(source(), {"客户号": "crm_id"}, CUSTOMERS)
    assert "客户号" in str(err.value)
    assert err.value.column == "客户号"


def test_two_columns_cannot_map_to_one_field() -> None:
    with pytest.raises(MappingError, match="phone"):
        apply_mapping(source(), {"手机": "phone", "客户编号": "phone"}, CUSTOMERS)


def test_explicit_mapping_wins_over_canonical_header() -> None:
    df = pl.DataFrame({"phone": ["old"], "mobile": ["13800138000"]})
    out = apply_mapping(df, {"mobile": "phone"}, CUSTOMERS)
    assert out["phone"].to_list() == ["13800138000"]
    assert out[EXTRA].to_list() == [{"phone": "old"}]


def test_mapping_without_record_column_numbers_rows() -> None:
    df = apply_mapping(pl.DataFrame({"sku": ["S1", "S2"], "name": ["a", "b"]}), {}, SCHEMAS["products"])
    assert df[RECORD].to_list() == [1, 2]
    assert EXTRA not in df.columns


def test_csv_to_rejections_end_to_end(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    path.write_bytes(
        "订单号,下单时间,手机,单价,状态\n"
        "O1,2025/3/1 10:00,138 0013 8000,￥10,paid\n"
        "O2,,13800138000,5,paid\n"
        "O3,2025-03-02 09:00,13800138000,-5,refund\n"
        "O4,2025-03-02 09:00,13800138000,-5,paid\n".encode("gbk")
    )
    mapping = {"订单号": "order_id", "下单时间": "ordered_at", "手机": "phone", "单价": "unit_price", "状态": "status"}
    result = clean(apply_mapping(read_table(path), mapping, ORDERS), ORDERS)
    assert result.rows_read == 4
    assert result.accepted["order_id"].to_list() == ["O1", "O3"]
    assert [(r.record, r.field) for r in result.rejected] == [(2, "ordered_at"), (4, "unit_price")]
    assert result.rejected[0].reason == "missing required field 'ordered_at'"
    assert result.rejected[1].raw["order_id"] == "O4"
    assert str(result.rejected[1]).startswith("record 4: field 'unit_price'")
