"""Load a bank-churn CSV and check it against the schema before anything is logged."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

# Column -> (pandas dtype, MLflow schema type) the model is trained and served on.
SCHEMA: dict[str, str] = {
    "CreditScore": "float64",
    "Age": "int64",
    "Tenure": "int64",
    "NumOfProducts": "int64",
    "Balance": "float64",
    "EstimatedSalary": "float64",
    "HasCrCard": "bool",
    "IsActiveMember": "bool",
    "Geography": "str",
    "Gender": "str",
}
TARGET = "Exited"
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


class DataError(Exception):
    """The dataset can't be used; the message says why, in one line."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _as_bool(series: pd.Series, column: str) -> pd.Series:
    text = series.astype(str).str.strip().str.lower()
    bad = sorted(set(text[~text.isin(_TRUE | _FALSE)]))
    if bad:
        raise DataError(f"column {column!r} must be boolean (true/false or 1/0), found {bad[:3]}")
    return text.isin(_TRUE)


def coerce(frame: pd.DataFrame, columns: list[str], source: str) -> pd.DataFrame:
    """Return `columns` of `frame` in the schema's types, or raise DataError."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}")
    out = {}
    for column in columns:
        kind = SCHEMA.get(column)
        values = frame[column]
        if values.isna().any():
            raise DataError(f"{source}: column {column!r} has {int(values.isna().sum())} empty value(s)")
        try:
            if kind == "bool":
                out[column] = _as_bool(values, column)
            elif kind == "int64":
                numeric = pd.to_numeric(values, errors="raise")
                if (numeric != numeric.round()).any():
                    raise ValueError("non-integer values")
                out[column] = numeric.astype("int64")
            elif kind == "float64":
                out[column] = pd.to_numeric(values, errors="raise").astype("float64")
            else:
                out[column] = values.astype(str)
        except (ValueError, TypeError) as e:
            raise DataError(f"{source}: column {column!r} must be {kind}: {e}") from None
    return pd.DataFrame(out)


def load_dataset(path: Path, features: list[str], target: str = TARGET) -> tuple[pd.DataFrame, pd.Series]:
    """Read and validate the CSV; return (features frame, 0/1 target)."""
    source = str(path)
    if not path.is_file():
        raise DataError(f"{source}: no such file")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"{source}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as e:
        raise DataError(f"{source}: not a readable CSV ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if frame.empty:
        raise DataError(f"{source}: no data rows")
    if target not in frame.columns:
        raise DataError(f"{source}: missing target column {target!r}")
    unknown = [c for c in features if c not in SCHEMA]
    if unknown:
        raise DataError(f"features {unknown} are not in the bank-churn schema {sorted(SCHEMA)}")
    x = coerce(frame, features, source)
    y = pd.to_numeric(frame[target], errors="coerce")
    values = set(y.dropna().unique())
    if y.isna().any() or not values <= {0, 1}:
        shown = sorted(set(frame[target].astype(str)) - {"0", "1"})[:3]
        raise DataError(f"{source}: target {target!r} must be 0/1, found {shown}")
    if len(values) < 2:
        raise DataError(f"{source}: target {target!r} has a single class; nothing to learn")
    return x, y.astype("int64")
