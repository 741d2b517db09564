"""locality.units: the one parser each for sizes, durations and counts."""

from __future__ import annotations

import pytest

from locality.errors import InvalidArgument
from locality.units import format_bytes, parse_count, parse_counts, parse_duration, parse_size


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("500ms", 0.5), ("2m", 120.0), ("3min", 180.0), ("1.5h", 5400.0),
                                           ("30", 30.0), (" 0.25s ", 0.25), (".5s", 0.5), (2, 2.0), (0.1, 0.1)])
def test_durations(text, seconds):
    assert parse_duration(text, "--interval") == seconds


@pytest.mark.parametrize("bad, says", [("-1s", "must be > 0"), ("0", "must be > 0"), ("0ms", "must be > 0"),
                                       ("nan", "is not a duration"), ("inf", "is not a duration"),
                                       ("1d", "is not a duration"), ("", "is not a duration"),
                                       (float("nan"), "is not a duration"), (float("inf"), "is not a duration"),
                                       (-3, "must be > 0"), (True, "is not a duration")])
def test_bad_durations_name_the_value_and_the_forms(bad, says):
    with pytest.raises(InvalidArgument) as e:
        parse_duration(bad, "--interval")
    text = str(e.value)
    assert says in text and repr(bad) in text and "500ms, 1s, 2m, 1.5h" in text and text.startswith("--interval")


@pytest.mark.parametrize("text, n", [("4G", 4 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("65536", 65536),
                                     ("2k", 2048), ("1T", 1 << 40), ("7 MB", 7 << 20), (10, 10)])
def test_sizes(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("bad", ["", "12Q", "-1M", "0", 0, -5, True, "nan", "inf", "1e3"])
def test_bad_sizes(bad):
    with pytest.raises(InvalidArgument, match="512M"):
        parse_size(bad)


def test_counts():
    assert parse_count("250k") == 250_000 and parse_count("1M") == 1_000_000 and parse_count("1_000") == 1000
    assert parse_counts("10k,100k,1M") == [10_000, 100_000, 1_000_000]
    for bad in ("0", "-1", "x", "1G", True, "nan"):
        with pytest.raises(InvalidArgument, match="250k, 1M"):
            parse_count(bad, "--workers")


def test_format_bytes():
    assert [format_bytes(n) for n in (0, 1023, 1536, 3 << 30)] == ["0 B", "1,023 B", "1.5 KiB", "3.0 GiB"]
