"""Read rows of a data file (JSONL, JSON, CSV, Parquet, `save_to_disk` folder, hub id).

Every reader returns `list[(where, row)]`: `row` is a dict from column name to value and
`where` is the number an error message shows after the file name:

    JSONL, CSV          1-based line number (CSV counts the header as line 1; a quoted
                        value spanning several lines reports the line the row starts on)
    JSON, Parquet,      0-based row index, as in `data[i]`, `table.slice(i)` or
    datasets folder,    `dataset[i]`
    hub dataset

Anything wrong with the file itself (missing, not UTF-8, malformed, empty) raises a
one-line `DataError` naming the file and, where there is one, the line. Checking the
*fields* of a row is the job of `rlhfkit.data.formats`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from rlhfkit.errors import DataError

Rows = list[tuple[int, dict]]

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# "imdb" or "Anthropic/hh-rlhf": anything else that does not exist locally is a path typo.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def read_rows(source: str | os.PathLike, split: str = "train") -> Rows:
    """Read every row of `source` as `(where, row_dict)`; see the module docstring.

    `source` is a file (its suffix picks the reader), a folder written by
    `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` (`split` picks the split
    of a DatasetDict), or a Hugging Face hub id loaded with `datasets.load_dataset`.
    """
    path = Path(os.path.expanduser(str(source)))
    if path.is_dir():
        rows = _read_saved_dataset(path, split)
    elif path.is_file():
        rows = _read_file(path)
    elif _looks_like_path(str(source)):
        raise DataError(source, None, None, "no such file or folder")
    else:
        rows = _read_hub_dataset(str(source), split)
    if not rows:
        raise DataError(source, None, None, "no rows")
    return rows


def _looks_like_path(source: str) -> bool:
    """True when a missing `source` is a file name, not a hub id like "org/name"."""
    return (Path(source).suffix.lower() in FILE_SUFFIXES
            or source.startswith(("/", ".", "~")) or "\\" in source
            or not _HUB_ID.match(source))


def _read_file(path: Path) -> Rows:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix not in FILE_SUFFIXES:
        raise DataError(path, None, None, f"unsupported file type '{suffix}'; expected "
                        "one of .jsonl, .json, .csv, .parquet or a save_to_disk folder")
    text = _decode_utf8(path)
    if suffix == ".csv":
        return _read_csv(path, text)
    # A pretty-printed array in a .jsonl file is a JSON file under the wrong name: read it.
    if suffix == ".json" or text.lstrip().startswith("["):
        return _read_json(path, text)
    return _read_jsonl(path, text)


def _decode_utf8(path: Path) -> str:
    """The file's text; invalid UTF-8 is an error naming the line of the first bad byte."""
    data = path.read_bytes()
    try:
        # utf-8-sig drops a byte-order mark, which spreadsheet tools like to write.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(path, line, None, f"invalid UTF-8 (byte 0x{data[e.start]:02x}); "
                        "save the file as UTF-8") from None


def _as_object(path: Path, where: int, value) -> dict:
    if not isinstance(value, dict):
        raise DataError(path, where, None,
                        f"expected a JSON object, got {_json_type(value)}")
    for key, item in value.items():
        if _has_lone_surrogate(item):
            raise DataError(path, where, key, "invalid text: a \\ud800-\\udfff escape that "
                            "is half of a character (a lone surrogate), not valid Unicode")
    return value


def _has_lone_surrogate(value) -> bool:
    """JSON escapes like "\\ud800" decode to strings no tokenizer can encode."""
    if isinstance(value, str):
        if value.isascii():
            return False
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list):
        return any(map(_has_lone_surrogate, value))
    if isinstance(value, dict):
        return any(map(_has_lone_surrogate, value.values()))
    return False


def _json_error(path: Path, line: int | None, err: Exception) -> DataError:
    """A DataError for anything json.loads raises: malformed text, a number of more than
    4300 digits (ValueError), nesting too deep for the parser (RecursionError)."""
    if isinstance(err, json.JSONDecodeError):
        return DataError(path, line, None, f"invalid JSON: {err.msg} (column {err.colno})")
    if isinstance(err, RecursionError):
        return DataError(path, line, None, "invalid JSON: nested too deeply")
    return DataError(path, line, None, f"invalid JSON: {_first_line(err)}")


def _json_type(value) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _read_jsonl(path: Path, text: str) -> Rows:
    """One JSON object per line; blank lines are skipped but still counted."""
    rows = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028, which splitlines breaks on.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise _json_error(path, line_no, e) from None
        rows.append((line_no, _as_object(path, line_no, value)))
    return rows


def _read_json(path: Path, text: str) -> Rows:
    """A JSON array of objects (row index = position), or one object (row 0).

    JSON Lines content in a `.json` file ("Extra data" after the first object) is read
    as JSON Lines, so line numbers in later errors stay right.
    """
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return _read_jsonl(path, text)
        raise _json_error(path, e.lineno, e) from None
    except (ValueError, RecursionError) as e:
        raise _json_error(path, None, e) from None
    if isinstance(data, dict):
        return [(0, data)]
    if not isinstance(data, list):
        raise DataError(path, None, None,
                        f"expected an array of objects, got {_json_type(data)}")
    return [(i, _as_object(path, i, value)) for i, value in enumerate(data)]


def _read_csv(path: Path, text: str) -> Rows:
    """A header row, then one row per record; every value is a string."""
    # The csv module refuses values over 128 KiB by default; a long document is no error.
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        _check_header(path, header)
        rows, start = [], reader.line_num + 1
        for values in reader:
            if values:  # a blank line is no row
                rows.append((start, _csv_row(path, start, header, values)))
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(path, reader.line_num, None, f"malformed CSV: {e}") from None
    return rows


def _check_header(path: Path, header: list[str]) -> None:
    seen = set()
    for name in header:
        if not name.strip():
            raise DataError(path, 1, None, "the header has an empty column name")
        if name in seen:
            raise DataError(path, 1, name, "column appears twice in the header")
        seen.add(name)


def _csv_row(path: Path, line: int, header: list[str], values: list[str]) -> dict:
    if len(values) < len(header):
        raise DataError(path, line, header[len(values)],
                        f"missing: the row has {len(values)} values, the header "
                        f"{len(header)} columns")
    if len(values) > len(header):
        raise DataError(path, line, None, f"the row has {len(values)} values, the header "
                        f"only {len(header)} columns")
    return dict(zip(header, values))


def _read_parquet(path: Path) -> Rows:
    import pyarrow  # lazy: only Parquet users pay for the import
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise DataError(path, None, None, f"not a readable Parquet file: {_first_line(e)}") \
            from None
    return list(enumerate(table.to_pylist()))


def _read_saved_dataset(path: Path, split: str) -> Rows:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    if not ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        raise DataError(path, None, None, "a folder, but not one written by "
                        "datasets' save_to_disk (no state.json or dataset_dict.json)")
    import datasets  # lazy: importing datasets takes about a second
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # any failure inside datasets becomes one line, not a traceback
        raise DataError(path, None, None, f"cannot load the saved dataset: {_first_line(e)}") \
            from None
    return list(enumerate(_pick_split(path, loaded, split).to_list()))


def _pick_split(source, loaded, split: str):
    """The `split` of a DatasetDict; a plain Dataset is returned as it is."""
    if not hasattr(loaded, "keys"):
        return loaded
    if split not in loaded:
        raise DataError(source, None, None, f"no split '{split}'; the dataset has: "
                        f"{', '.join(sorted(loaded.keys()))}")
    return loaded[split]


def _read_hub_dataset(name: str, split: str) -> Rows:
    """A dataset id on the Hugging Face hub (or in the local datasets cache)."""
    import datasets
    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as e:  # network, auth, missing split...: one line for the user
        raise DataError(name, None, None, f"not a local file, and loading it as a hub "
                        f"dataset failed: {type(e).__name__}: {_first_line(e)}") from None
    return list(enumerate(_pick_split(name, loaded, split).to_list()))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
