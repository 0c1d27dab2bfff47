"""Read import files into all-string polars frames and map their columns.

Nothing here parses values: every column comes out as text (``pl.Utf8``) so
that :mod:`goldkey.collect.cleaning` owns all parsing and can report every
problem against the record it came from.

Formats:

* CSV (also ``.txt`` / ``.tsv``): UTF-8, UTF-8 with BOM, UTF-16 with BOM, and
  a GB18030 (superset of GBK / GB2312) fallback for files that are not valid
  UTF-8.  The separator (comma, tab, semicolon or pipe) is sniffed from the
  header line.
* Excel ``.xlsx`` / ``.xlsm`` via openpyxl (the first sheet unless *sheet* is
  given).  Numbers are written without a spurious ``.0`` when integral, dates
  as ``YYYY-MM-DD`` and date-times as ``YYYY-MM-DD HH:MM:SS``.  Legacy
  ``.xls`` is not supported.
* Parquet: typed columns are cast to text (integral floats without ``.0``,
  naive timestamps as ``YYYY-MM-DD HH:MM:SS.ffffff``, zoned ones in UTC with a
  ``+00:00`` suffix).

Every frame starts with ``__record``: the 1-based number of the data row as a
user counts it (the first row under the header is record 1).
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from goldkey.collect.import_schemas import EXTRA, RECORD, ImportSchema
from goldkey.identity.graph import GROUPS

__all__ = [
    "ImportFileError",
    "MappingError",
    "read_table",
    "file_digest",
    "apply_mapping",
    "unmapped_columns",
    "SUPPORTED_FORMATS",
]

#: Accepted values of read_table's *fmt*.
SUPPORTED_FORMATS = ("csv", "tsv", "xlsx", "parquet")

_SUFFIX_FORMATS = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".parquet": "parquet",
    ".pq": "parquet",
}


class ImportFileError(ValueError):
    """A file cannot be read as a table.

    Attributes:
        path: the file.
        message: what is wrong, for people.
    """

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        self.message = message
        super().__init__(f"{self.path.name}: {message}")


class MappingError(ValueError):
    """A column mapping does not fit the file or the schema.

    Attributes:
        column: the offending source column, when there is one.
        field: the offending target field name, when there is one.
    """

    def __init__(self, message: str, *, column: str | None = None, field: str | None = None) -> None:
        self.column = column
        self.field = field
        super().__init__(message)


# --------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------


def file_digest(path: Path) -> str:
    """Return the SHA-256 hex digest of the file's bytes.

    Raises:
        ImportFileError: the file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise ImportFileError(path, f"cannot read file: {exc.strerror or exc}") from exc
    return h.hexdigest()


def read_table(path: Path, fmt: str | None = None, sheet: str | None = None) -> pl.DataFrame:
    """Read a CSV, Excel or Parquet file into a frame of text columns.

    Args:
        path: the file.
        fmt: "csv", "tsv", "xlsx" or "parquet"; when None it is taken from the
            file's content (xlsx / parquet signatures) and then its suffix.
        sheet: the Excel sheet to read (default: the first); ignored for
            other formats.

    Returns:
        A frame whose first column is ``__record`` (Int64, 1-based data row
        number) followed by the file's columns, in file order, all ``pl.Utf8``
        with empty cells as null.  Header names are stripped of surrounding
        whitespace; empty or repeated header names are made unique
        ("column_3", "name_2").

    Raises:
        ImportFileError: the file is missing or unreadable, the format is
            unknown or unsupported, the text encoding is not recognised, the
            sheet does not exist, or the content is not a table.
    """
    path = Path(path)
    if not path.is_file():
        raise ImportFileError(path, "file not found")
    resolved = _resolve_format(path, fmt)
    try:
        if resolved in ("csv", "tsv"):
            df = _read_csv(path, tab=resolved == "tsv")
        elif resolved == "xlsx":
            df = _read_xlsx(path, sheet)
        else:
            df = _read_parquet(path)
    except ImportFileError:
        raise
    except OSError as exc:
        raise ImportFileError(path, f"cannot read file: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad file
        raise ImportFileError(path, f"cannot read as {resolved}: {exc}") from exc
    return df


def _resolve_format(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        f = fmt.lower().lstrip(".")
        f = {"xlsm": "xlsx", "pq": "parquet", "txt": "csv", "excel": "xlsx"}.get(f, f)
        if f not in SUPPORTED_FORMATS:
            raise ImportFileError(path, f"unknown format {fmt!r}; supported: {', '.join(SUPPORTED_FORMATS)}")
        return f
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ImportFileError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"PK\x03\x04"):
        return "xlsx"
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise ImportFileError(path, "legacy Excel .xls files are not supported; save the sheet as .xlsx or CSV")
    suffix = path.suffix.lower()
    if suffix == ".xls":
        raise ImportFileError(path, "legacy Excel .xls files are not supported; save the sheet as .xlsx or CSV")
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    raise ImportFileError(
        path,
        f"unknown file type {suffix or '(no suffix)'!r}; supported: .csv, .tsv, .txt, .xlsx, .parquet",
    )


def _sniff_separator(header: str) -> str:
    """Pick the separator occurring most often outside quotes in the header."""
    counts = {",": 0, "\t": 0, ";": 0, "|": 0}
    quoted = False
    for ch in header:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in counts:
            counts[ch] += 1
    best = max(counts, key=lambda c: counts[c])
    return best if counts[best] > 0 else ","


def _first_line(data: bytes) -> bytes:
    end = data.find(b"\n")
    return data if end < 0 else data[:end]


def _read_csv(path: Path, *, tab: bool) -> pl.DataFrame:
    """Read CSV bytes: BOMs first, then UTF-8, then GB18030 (covers GBK)."""
    data = path.read_bytes()
    if re.fullmatch(rb"\s*", data[:65536]) and not data[65536:].strip():
        raise ImportFileError(path, "the file is empty")
    payload: bytes | None = None
    if data.startswith(b"\xef\xbb\xbf"):
        payload = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            payload = data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImportFileError(path, "invalid UTF-16 text") from exc
    elif b"\x00" in data[:4096]:
        raise ImportFileError(path, "this looks like a binary file, not CSV text")
    else:
        payload = data
    header = _first_line(payload)
    try:
        header_text = header.decode("utf-8")
        encoding = "utf-8"
    except UnicodeDecodeError:
        header_text = header.decode("gb18030", errors="replace")
        encoding = "gb18030"
    separator = "\t" if tab else _sniff_separator(header_text)
    if encoding == "utf-8":
        try:
            df = _polars_csv(path, payload, separator)
        except pl.exceptions.ComputeError as exc:
            if "utf-8" not in str(exc).lower() and "utf8" not in str(exc).lower():
                raise
            _refuse_damaged_utf8(path, payload)
            encoding = "gb18030"
    if encoding == "gb18030":
        try:
            text = payload.decode("gb18030")
        except UnicodeDecodeError as exc:
            raise ImportFileError(path, "text encoding not recognised (expected UTF-8 or GBK/GB18030)") from exc
        df = _polars_csv(path, text.encode("utf-8"), separator)
        header_text = text.split("\n", 1)[0]
    # the header as written: polars renames a repeated name to "<name>_duplicated_<n>" itself
    written = next(csv.reader([header_text.rstrip("\r")], delimiter=separator), [])
    df.columns = _unique_headers(written if len(written) == df.width else df.columns)
    return _with_record(df)


_CJK = re.compile(r"[\u4e00-\u9fff]")


def _refuse_damaged_utf8(path: Path, payload: bytes) -> None:
    """Raise ImportFileError when *payload* is UTF-8 text with a damaged stretch (not GBK).

    A GBK file fails UTF-8 at its first Chinese character; a UTF-8 file cut or edited mid-character
    fails later, after Chinese text that decoded as UTF-8. Read as GB18030, the second would be
    accepted with every Chinese value garbled; so it is refused, naming the line to fix.
    """
    try:
        payload.decode("utf-8")
        return
    except UnicodeDecodeError as exc:
        start = exc.start
    before = payload[:start].decode("utf-8")
    if len(_CJK.findall(before, 0, 100_000)) < 2:
        return  # no Chinese text read as UTF-8 before it: GBK / GB18030 it is
    line = payload.count(b"\n", 0, start) + 1
    raise ImportFileError(
        path, f"invalid UTF-8 at line {line} (byte {start}) of a file that is otherwise UTF-8: a character "
        "there is cut or damaged; fix that line or export the file again")


def _polars_csv(path: Path, payload: bytes, separator: str) -> pl.DataFrame:
    """Parse UTF-8 CSV *payload* with every column as text.

    Rows with more fields than the header are tolerated only when the extra
    fields are empty (trailing separators); otherwise the file is rejected,
    naming the first such row, rather than losing data.
    """

    def parse(truncate: bool) -> pl.DataFrame:
        return pl.read_csv(
            io.BytesIO(payload),
            separator=separator,
            infer_schema=False,
            has_header=True,
            quote_char='"',
            raise_if_empty=True,
            truncate_ragged_lines=truncate,
        )

    try:
        return parse(False)
    except pl.exceptions.ComputeError as exc:
        if "more fields" not in str(exc):
            raise
    reader = csv.reader(io.StringIO(payload.decode("utf-8"), newline=""), delimiter=separator)
    width = len(next(reader, []))
    for number, row in enumerate(reader, start=1):
        if len(row) > width and any(cell.strip() for cell in row[width:]):
            raise ImportFileError(
                path,
                f"record {number} has {len(row)} fields but the header has {width} "
                "(an unquoted separator inside a value?)",
            )
    return parse(True)


def _unique_headers(names: Iterable[str | None]) -> list[str]:
    """Return stripped, non-empty, unique header names (same order).

    Empty names become "column_<position>"; repeats get "_2", "_3"...
    """
    out: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(names, start=1):
        name = (raw or "").strip().lstrip("\ufeff").strip()
        if not name:
            name = f"column_{i}"
        base, n = name, 1
        while name in seen:
            n += 1
            name = f"{base}_{n}"
        seen.add(name)
        out.append(name)
    return out


def _with_record(df: pl.DataFrame, records: pl.Series | None = None) -> pl.DataFrame:
    """Return *df* with ``__record`` (Int64) inserted as the first column."""
    if records is None:
        records = pl.int_range(1, df.height + 1, eager=True, dtype=pl.Int64)
    records = records.alias(RECORD).cast(pl.Int64)
    if RECORD in df.columns:  # a source column that happens to be called so
        df = df.rename({RECORD: f"{RECORD}_source"})
    return df.insert_column(0, records)


def _cell_text(value: Any) -> str | None:
    """Render one Excel cell value as text (None for empty cells)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        text = format(value, ".15g")
        return repr(value) if "e" in text else text
    if isinstance(value, _dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(_dt.UTC)
            return value.isoformat(sep=" ")
        if value.time() == _dt.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    return str(value)


def _read_xlsx(path: Path, sheet: str | None) -> pl.DataFrame:
    try:
        import openpyxl  # noqa: PLC0415 - optional heavy import
    except ImportError as exc:  # pragma: no cover - openpyxl is a dependency
        raise ImportFileError(path, "reading .xlsx needs the openpyxl package") from exc
    # A file object, so that openpyxl does not insist on an .xlsx suffix.
    handle = open(path, "rb")  # noqa: SIM115 - closed in the finally below
    try:
        wb = openpyxl.load_workbook(handle, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001
        handle.close()
        raise ImportFileError(path, f"not a readable .xlsx workbook: {exc}") from exc
    try:
        if sheet is None:
            if not wb.worksheets:
                raise ImportFileError(path, "the workbook has no sheets")
            ws = wb.worksheets[0]
        else:
            if sheet not in wb.sheetnames:
                raise ImportFileError(path, f"no sheet named {sheet!r}; sheets: {', '.join(wb.sheetnames)}")
            ws = wb[sheet]
        header: list[Any] | None = None
        columns: list[list[str | None]] = []
        records: list[int] = []
        position = 0  # data-row position under the header, blank rows included
        for row in ws.iter_rows(values_only=True):
            cells = [_cell_text(v) for v in row]
            if header is None:
                if any(c is not None for c in cells):
                    header = list(row)
                    columns = [[] for _ in header]
                continue
            position += 1
            if not any(c is not None for c in cells):
                continue  # blank row: counted, not kept
            while len(cells) > len(header):
                header.append(None)
                columns.append([None] * len(records))
            records.append(position)
            for i in range(len(header)):
                columns[i].append(cells[i] if i < len(cells) else None)
    finally:
        wb.close()
        handle.close()
    if header is None:
        raise ImportFileError(path, "the sheet is empty")
    # Drop trailing columns with neither a header nor any value.
    keep = [
        i for i in range(len(header)) if _cell_text(header[i]) is not None or any(v is not None for v in columns[i])
    ]
    # Empty headers are named after the sheet column position the user sees.
    names = _unique_headers([_cell_text(header[i]) or f"column_{i + 1}" for i in keep])
    df = pl.DataFrame({name: pl.Series(name, columns[i], dtype=pl.Utf8) for name, i in zip(names, keep, strict=True)})
    return _with_record(df, pl.Series(RECORD, records, dtype=pl.Int64))


def _read_parquet(path: Path) -> pl.DataFrame:
    df = pl.read_parquet(path)
    exprs = [_as_text(name, dtype) for name, dtype in df.schema.items()]
    out = df.select(exprs) if exprs else df
    out.columns = _unique_headers(out.columns)
    return _with_record(out)


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    """Return an expression rendering column *name* of *dtype* as text."""
    col = pl.col(name)
    if dtype == pl.Utf8:
        return col
    if dtype.is_float():
        c = col.fill_nan(None)
        integral = c.is_finite() & (c == c.round(0)) & (c.abs() < 1e15)
        return (
            pl.when(integral).then(c.cast(pl.Int64, strict=False).cast(pl.Utf8)).otherwise(c.cast(pl.Utf8)).alias(name)
        )
    if dtype.is_integer() or dtype.is_decimal() or dtype == pl.Boolean:
        return col.cast(pl.Utf8)
    if dtype == pl.Date:
        return col.dt.strftime("%Y-%m-%d")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is not None:
            # in its own zone, with its offset: the same instant, and a date column written as a
            # zoned midnight (1990-01-01 00:00 Asia/Shanghai) stays that date (in UTC it was the 31st,
            # 16:00, which a date field refuses)
            return col.dt.strftime("%Y-%m-%d %H:%M:%S%.f%:z")
        return col.dt.strftime("%Y-%m-%d %H:%M:%S%.f")
    if dtype == pl.Duration or isinstance(dtype, pl.Duration):
        # polars cannot cast a duration to text: seconds, as a number ("90", "1.5")
        secs = col.dt.total_microseconds() / 1_000_000
        whole = secs == secs.round(0)
        return pl.when(whole).then(secs.cast(pl.Int64).cast(pl.Utf8)).otherwise(secs.cast(pl.Utf8)).alias(name)
    if dtype in (pl.Categorical, pl.Time, pl.Null) or isinstance(dtype, (pl.Enum, pl.Categorical)):
        return col.cast(pl.Utf8)
    if dtype == pl.Binary:
        return col.bin.encode("hex")
    # Nested or exotic types: JSON text.
    return col.map_elements(
        lambda v: json.dumps(_jsonable(v), ensure_ascii=False, default=str),
        return_dtype=pl.Utf8,
        skip_nulls=True,
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, pl.Series):
        return value.to_list()
    return value


# --------------------------------------------------------------------------
# mapping
# --------------------------------------------------------------------------


def _resolve_mapping(
    columns: list[str], mapping: Mapping[str, str], schema: ImportSchema
) -> tuple[dict[str, str], list[str]]:
    """Return ({source column: field}, [unmapped source columns]).

    Raises:
        MappingError: see :func:`apply_mapping`.
    """
    fields = schema.field_names
    valid = ", ".join(fields)
    present = set(columns)
    renames: dict[str, str] = {}
    ignored: set[str] = set()
    by_target: dict[str, str] = {}
    for source, target in mapping.items():
        if target is None or target == "":
            ignored.add(source)
            continue
        if target not in fields:
            raise MappingError(
                f"column {source!r} is mapped to {target!r}, which is not a {schema.kind} field; valid fields: {valid}",
                column=source,
                field=target,
            )
        if source not in present:
            shown = ", ".join(c for c in columns if c != RECORD)
            raise MappingError(
                f"mapped column {source!r} is not in the file; the file's columns are: {shown}",
                column=source,
                field=target,
            )
        if target in by_target:
            raise MappingError(
                f"field {target!r} is mapped from more than one column: {by_target[target]!r} and {source!r}",
                column=source,
                field=target,
            )
        by_target[target] = source
        renames[source] = target
    # Columns already named like a field need no mapping (exact name first,
    # then case-insensitive).
    rest = [c for c in columns if c != RECORD and c not in renames and c not in ignored]
    for col in rest:
        if col in fields and col not in by_target:
            renames[col] = col
            by_target[col] = col
    lowered = {f.lower(): f for f in fields}
    for col in rest:
        if col in renames:
            continue
        target = lowered.get(col.strip().lower())
        if target is not None and target not in by_target:
            renames[col] = target
            by_target[target] = col
    unmapped = [c for c in rest if c not in renames]
    return renames, unmapped


def unmapped_columns(df: pl.DataFrame, mapping: Mapping[str, str], schema: ImportSchema) -> list[str]:
    """Return the source columns that neither *mapping* nor their name maps to a field.

    These go into ``extra`` for customers and are dropped for other kinds.
    Columns explicitly mapped to "" (ignore) and ``__record`` are not listed.

    Raises:
        MappingError: as :func:`apply_mapping`.
    """
    return _resolve_mapping(df.columns, mapping, schema)[1]


def apply_mapping(df: pl.DataFrame, mapping: Mapping[str, str], schema: ImportSchema) -> pl.DataFrame:
    """Rename source columns to the schema's field names.

    Args:
        df: a frame from :func:`read_table` (all text columns).
        mapping: {source column: field name}.  Columns whose name already
            equals a field name (exactly, or ignoring case and surrounding
            spaces) are taken without a mapping entry.  A target of "" means
            "drop this column".
        schema: the record kind.

    Returns:
        A frame with ``__record`` first (added, numbering rows from 1, when
        *df* has none), then the mapped fields in schema order (fields absent
        from the file are simply absent), then — for customers only — an
        ``extra`` struct column holding every other source column as
        string -> string (None for empty cells).  Other kinds drop unmapped
        columns; list them with :func:`unmapped_columns`.

    Raises:
        MappingError: a target is not a field of *schema* (the message lists
            the valid fields), a mapped source column is not in *df*, or two
            source columns are mapped to the same field.
    """
    renames, unmapped = _resolve_mapping(df.columns, mapping, schema)
    if not renames and not schema.keeps_extra:
        shown = ", ".join(repr(c) for c in df.columns[:8] if c != RECORD) + (" ..." if len(df.columns) > 8 else "")
        raise MappingError(f"none of the file's columns ({shown or 'none'}) is a field of {schema.kind}; name them as "
                           f"the fields ({', '.join(schema.field_names[:6])}, ...) or give a column mapping "
                           "(source column -> field)")
    if schema.keeps_extra and GROUPS in unmapped:
        raise MappingError(f"the column {GROUPS!r} would become the attribute holding the group "
                           "memberships that group calls record; rename it, or map it to \"\" to leave it out")
    by_field = {target: source for source, target in renames.items()}
    if RECORD in df.columns:
        exprs: list[pl.Expr] = [pl.col(RECORD).cast(pl.Int64)]
    else:
        exprs = [pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(RECORD)]
    for field in schema.field_names:
        source = by_field.get(field)
        if source is not None:
            exprs.append(pl.col(source).cast(pl.Utf8).alias(field))
    if schema.keeps_extra:
        if unmapped:
            exprs.append(pl.struct([pl.col(c).cast(pl.Utf8) for c in unmapped]).alias(EXTRA))
        else:
            exprs.append(pl.repeat({}, pl.len(), dtype=pl.Struct({})).alias(EXTRA))
    return df.select(exprs)
