"""appendstore: appended timelines and chunked page matrices read back exactly as written."""

from __future__ import annotations

import numpy as np
import pandas as pd

from locality.experiment.appendstore import AppendStore, chunk_paths, read_pages, read_timeline


def test_appended_rows_read_back_and_a_torn_last_row_is_dropped(tmp_path):
    disk = AppendStore(tmp_path)
    disk.append(pd.DataFrame({"t": [0.0, 0.5], "rss_bytes": [10, 20]}))
    disk.append(pd.DataFrame({"t": [1.0], "rss_bytes": [30]}))
    disk.append(pd.DataFrame({"t": [1.5]}))  # a column not measured: empty, same header
    frame = read_timeline(tmp_path / "timeline.csv")
    assert frame["t"].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert frame["rss_bytes"].tolist()[:3] == [10, 20, 30] and np.isnan(frame["rss_bytes"].iloc[3])
    with open(tmp_path / "timeline.csv", "a") as f:
        f.write("2.0,4")  # a writer killed mid-row (no newline)
    assert read_timeline(tmp_path / "timeline.csv")["t"].tolist() == [0.0, 0.5, 1.0, 1.5]


def test_a_new_column_rewrites_the_timeline_with_the_wider_header(tmp_path):
    disk = AppendStore(tmp_path)
    disk.append(pd.DataFrame({"t": [0.0], "a": [1]}))
    disk.append(pd.DataFrame({"t": [1.0], "a": [2], "b": [7]}))
    disk.append(pd.DataFrame({"t": [2.0], "a": [3], "b": [8]}))
    frame = read_timeline(tmp_path / "timeline.csv")
    assert list(frame.columns) == ["t", "a", "b"]
    assert frame["a"].tolist() == [1, 2, 3] and frame["b"].tolist()[1:] == [7, 8] and np.isnan(frame["b"].iloc[0])
    assert [p.name for p in tmp_path.iterdir()] == ["timeline.csv"]


def test_chunks_with_growing_columns_merge_into_the_whole_matrix(tmp_path):
    rng = np.random.default_rng(3)
    widths = [5, 5, 13, 13, 20]  # pages tracked at each sample: columns only grow at the end
    bits = [rng.random(n) < 0.4 for n in widths]
    whole = np.zeros((len(widths), 20), dtype=bool)
    for i, b in enumerate(bits):
        whole[i, : len(b)] = b
    disk = AppendStore(tmp_path)
    for lo, hi in [(0, 2), (2, 3), (3, 5)]:
        n = widths[hi - 1]
        mat = np.zeros((hi - lo, n), dtype=bool)
        for i in range(lo, hi):
            mat[i - lo, : widths[i]] = bits[i]
        disk.chunk({"t": np.arange(lo, hi, dtype=float), "written": np.packbits(mat, axis=1),
                    "page_addr": np.arange(n, dtype=np.uint64) * 4096, "n_pages": np.asarray(n)})
    disk.chunk({"t": np.empty(0)})  # nothing new: no chunk
    assert len(chunk_paths(tmp_path)) == 3
    merged = read_pages(tmp_path)
    assert merged["t"].tolist() == [0, 1, 2, 3, 4] and int(merged["n_pages"]) == 20
    assert np.array_equal(np.unpackbits(merged["written"], axis=1, count=20).astype(bool), whole)
    disk.finish_pages({"t": merged["t"], "n_pages": merged["n_pages"]})
    assert not (tmp_path / "pages").exists() and set(read_pages(tmp_path)) == {"t", "n_pages"}


def test_an_unchanged_column_description_is_stored_once(tmp_path):
    disk = AppendStore(tmp_path)
    addr = np.arange(1000, dtype=np.uint64) * 4096
    rows = np.packbits(np.eye(3, 1000, dtype=bool), axis=1)
    for i in range(3):
        disk.chunk({"t": np.asarray([float(i)]), "resident": rows[i:i + 1], "page_addr": addr, "n_pages": np.asarray(1000)})
    stored = []
    for p in chunk_paths(tmp_path):
        with np.load(p) as z:
            stored.append(sorted(z.files))
    assert stored == [["n_pages", "page_addr", "resident", "t"], ["n_pages", "resident", "t"], ["n_pages", "resident", "t"]]
    merged = read_pages(tmp_path)
    assert np.array_equal(merged["page_addr"], addr) and np.array_equal(merged["resident"], rows)
