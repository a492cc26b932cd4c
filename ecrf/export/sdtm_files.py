"""Writing SDTM datasets: CSV (UTF-8), SAS XPORT v5 (pyreadstat) and the metadata JSON.

XPORT v5 is what regulators accept, and it is an ASCII format with 200-byte character
values: text is transliterated for it (multiplication sign to ``x``, micro sign to ``u``,
accents dropped, anything else ``?``) and cut at 200 bytes; the metadata names every
variable that was cut. CSV keeps the values exactly (UTF-8).
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import pandas as pd

from ecrf.export.cut import LogCut
from ecrf.export.sdtm import CHAR, NUM, Dataset, SdtmPackage

FORMATS = ("csv", "xpt")
XPT_MAX_CHARS = 200
XPT_MAX_LABEL = 40
HEAD_PREFIX = 12
_TRANSLITERATION = {
    "\u00d7": "x",  # multiplication sign
    "\u00b5": "u",  # micro sign
    "\u03bc": "u",  # Greek mu
    "\u00b0": "deg",
    "\u2013": "-",
    "\u2014": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2265": ">=",
    "\u2264": "<=",
}


def ascii_text(text: str) -> str:
    """Text an ASCII-only format can carry (see the module docstring)."""
    out = []
    for char in unicodedata.normalize("NFKD", "".join(_TRANSLITERATION.get(c, c) for c in text)):
        if char.isascii():
            out.append(char)
        elif not unicodedata.combining(char):
            out.append("?")
    return "".join(out)


def _xpt_value(value: Any) -> str:
    if value is None:
        return ""
    return ascii_text(str(value))[:XPT_MAX_CHARS]


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def variable_metadata(dataset: Dataset) -> list[dict[str, Any]]:
    """Each variable's name, label, type and length (bytes as written to XPORT; Num: 8)."""
    described = []
    for index, variable in enumerate(dataset.variables):
        if variable.type == NUM:
            length = 8
        else:
            values = (_xpt_value(row[index]) for row in dataset.records())
            length = max((len(v.encode("ascii")) for v in values), default=0) or 1
        described.append(
            {
                "name": variable.name,
                "label": variable.label,
                "type": variable.type,
                "length": length,
            }
        )
    return described


def truncated(dataset: Dataset) -> list[str]:
    """Character variables with a value longer than XPORT v5 can hold."""
    names = []
    for index, variable in enumerate(dataset.variables):
        if variable.type == CHAR and any(
            row[index] is not None and len(ascii_text(str(row[index]))) > XPT_MAX_CHARS
            for row in dataset.records()
        ):
            names.append(variable.name)
    return names


def metadata_document(package: SdtmPackage, cut: LogCut) -> dict[str, Any]:
    """The metadata JSON: the cut it reflects, and every dataset's variables."""
    time_zone = package.time_zone
    return {
        "standard": "SDTM (SDTMIG 3.3 style) with an ADaM-style ADTTE",
        "ledger": cut.provenance(),
        "xpt_file_label": xpt_label(cut),
        "time_zone": time_zone,
        "study_day_rule": (
            "--DY = date - RFSTDTC + 1 on or after RFSTDTC (infusion date), date - RFSTDTC "
            "before it; no day 0 (protocol day + 1 from the infusion day on). Dates are "
            f"calendar days in {time_zone}: date-times are written in that zone, with its "
            "offset"
        ),
        "datasets": [
            {
                "name": dataset.name,
                "label": dataset.label,
                "records": len(dataset.rows),
                "files": [f"{key}.{fmt}" for fmt in FORMATS],
                "xpt_truncated": truncated(dataset),
                "variables": variable_metadata(dataset),
            }
            for key, dataset in package.datasets.items()
        ],
    }


def metadata_bytes(package: SdtmPackage, cut: LogCut) -> bytes:
    """The metadata JSON, indented."""
    return orjson.dumps(metadata_document(package, cut), option=orjson.OPT_INDENT_2) + b"\n"


def csv_bytes(dataset: Dataset) -> bytes:
    """The dataset as CSV (header of variable names; empty for absent values)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([v.name for v in dataset.variables])
    for record in dataset.records():
        writer.writerow([_csv_value(value) for value in record])
    return buffer.getvalue().encode("utf-8")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # 56, not 56.0: SAS and R read both; people read the first
    return value


def _frame(dataset: Dataset) -> pd.DataFrame:
    # pandas and pyreadstat are imported on use: they cost the server a second at start.
    import pandas as pd

    columns: dict[str, Any] = {}
    records = dataset.records()
    for index, variable in enumerate(dataset.variables):
        values: Iterable[Any] = (row[index] for row in records)
        if variable.type == NUM:
            columns[variable.name] = pd.Series([_num(v) for v in values], dtype="float64")
        else:
            columns[variable.name] = pd.Series([_xpt_value(v) for v in values], dtype="object")
    return pd.DataFrame(columns)


def write_xpt(dataset: Dataset, path: Path, label: str = "") -> None:
    """The dataset as a SAS transport (XPORT v5) file."""
    import pyreadstat

    pyreadstat.write_xport(
        _frame(dataset),
        str(path),
        file_label=ascii_text(label)[:XPT_MAX_LABEL],
        column_labels=[ascii_text(v.label)[:XPT_MAX_LABEL] for v in dataset.variables],
        table_name=dataset.name,
        file_format_version=5,
    )


def xpt_bytes(dataset: Dataset, label: str = "") -> bytes:
    """The XPORT v5 file as bytes (pyreadstat writes to a path only)."""
    with tempfile.TemporaryDirectory(prefix="ecrf-xpt-") as folder:
        path = Path(folder) / f"{dataset.name.lower()}.xpt"
        write_xpt(dataset, path, label)
        return path.read_bytes()


def xpt_label(cut: LogCut) -> str:
    """The XPORT file label: the cut's position and head prefix, within 40 characters.

    ``ledger <position> head <first 12 hex of the head>`` (the prefix the ODM FileOID
    carries too) fits any position below 10^15; the full head is in ``metadata.json`` and
    the HTTP headers. A longer position would shorten the prefix, never the position.
    """
    label = f"ledger {cut.position} head {cut.head[:HEAD_PREFIX]}"
    return label[:XPT_MAX_LABEL]


def write_package(
    package: SdtmPackage, cut: LogCut, directory: Path, formats: Iterable[str] = FORMATS
) -> list[Path]:
    """Write every dataset in each format, and ``metadata.json``; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    chosen = [f for f in formats if f in FORMATS]
    for key, dataset in package.datasets.items():
        if "csv" in chosen:
            path = directory / f"{key}.csv"
            path.write_bytes(csv_bytes(dataset))
            written.append(path)
        if "xpt" in chosen:
            path = directory / f"{key}.xpt"
            write_xpt(dataset, path, xpt_label(cut))
            written.append(path)
    metadata = directory / "metadata.json"
    metadata.write_bytes(metadata_bytes(package, cut))
    written.append(metadata)
    return written


def read_xpt(path: Path) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    """Read an XPORT file back: the frame, and its labels and table name."""
    import pyreadstat

    frame, meta = pyreadstat.read_xport(str(path))
    return frame, {
        "table_name": meta.table_name,
        "file_label": meta.file_label,
        "column_labels": dict(zip(meta.column_names, meta.column_labels, strict=True)),
    }
