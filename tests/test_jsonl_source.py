"""A mirror split kept as line offsets (sources/jsonl.py): the same rows as reading the file, checked
when indexed, small to pickle, and an error if the file changes under a build."""

from __future__ import annotations

import json
import os
import pickle

import pytest

from flan_builder.errors import FlanError
from flan_builder.sources import load_split
from flan_builder.sources.jsonl import JsonlLines
from flan_builder.specs import load_spec
from tests.helpers import FIXTURE_TEMPLATES, SHARED_DATA, requires_shared_data, write_rows


def _index(path, fields=("text",)):
    return JsonlLines.index(path, "t", "train", fields, path)


def test_rows_are_the_files_lines_parsed_blank_lines_skipped(tmp_path):
    rows = [{"text": f"row {i} " * 20, "n": i, "nested": {"é": [i, None]}} for i in range(40)]
    path = tmp_path / "train.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + ("\n\n" if i == 3 else "\r\n")
                   for i, r in enumerate(rows))
    path.write_bytes(text.encode("utf-8"))
    lines = _index(path)
    assert len(lines) == 40
    assert lines.take([5, 0, 5, 39]) == [rows[5], rows[0], rows[5], rows[39]]  # a few: read one by one
    assert list(lines) == rows  # the whole split: nearby lines read together, nothing kept
    assert lines[7] == rows[7] and lines[-1] == rows[39]
    chosen = lines.select([9, 2, 30])
    assert len(chosen) == 3 and chosen.take([0, 1, 2]) == [rows[9], rows[2], rows[30]]
    # it pickles as offsets, not rows, and reads the file again where it is unpickled
    copy = pickle.loads(pickle.dumps(lines))
    assert copy.take(range(40)) == rows
    assert len(pickle.dumps(lines)) < len(text) / 4


@pytest.mark.parametrize("content, message", [
    (b'{"text": "a"}\n{"text": \n', r"train.jsonl:2 is not valid JSON"),
    (b'{"text": "a"}\n[1, 2]\n', r"train.jsonl:2 is not a JSON object"),
    (b'{"text": "a"}\n\n{"txt": "b"}\n',
     r"train row 1 of .*train.jsonl lacks field\(s\) text \(it has: txt\)"),
    ('{"text": "a"}\n{"text": "caf\xe9"}\n'.encode("latin-1"), r"train.jsonl is not UTF-8 text .*line 2"),
])
def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(FlanError, match=message):
        _index(path)


def test_a_file_changed_during_a_build_is_an_error_not_other_rows(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf-8")
    lines = _index(path)
    path.write_text('{"text": "bb"}\n{"text": "a"}\n', encoding="utf-8")
    os.utime(path, ns=(1, 1))
    with pytest.raises(FlanError, match="changed or went away while the build was reading it"):
        lines.take([1])


def test_load_split_of_a_mirror_keeps_offsets(tmp_path):
    spec = load_spec(FIXTURE_TEMPLATES / "sentiment" / "toy_multi.yaml")
    rows = [{"text": f"t{i}", "choices": ["a", "b"], "label": i % 2} for i in range(5)]
    write_rows(tmp_path, "toy_multi", "train", rows)
    split = load_split(spec, "train", tmp_path)
    assert isinstance(split._rows, JsonlLines)
    assert split.all() == rows and split.take([4, 1]) == [rows[4], rows[1]]


@requires_shared_data
def test_the_shared_mirror_reads_the_same_rows_as_json_loads(registry):
    spec = registry.task("dream")
    split = load_split(spec, "train", SHARED_DATA)
    path = SHARED_DATA / spec.source.mirror / "train.jsonl"
    expected = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert split.all() == expected
    assert split.take([len(expected) - 1, 0]) == [expected[-1], expected[0]]


def test_take_reads_nearby_lines_together_in_file_order_and_keeps_nothing(tmp_path, monkeypatch):
    from flan_builder.sources import jsonl

    rows = [{"text": ("long " * 40 if i % 7 == 0 else "s") + str(i)} for i in range(60)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    monkeypatch.setattr(jsonl, "READ_BYTES", 64)  # shorter than the long lines: one read each
    reads: list[tuple[int, int]] = []
    lines = _index(path)
    real_read = lines._read
    lines._read = lambda start, end: reads.append((start, end)) or real_read(start, end)
    wanted = [59, 3, 0, 3, 14, 15, 16, -1, 28]
    assert lines.take(wanted) == [rows[i] for i in wanted]
    assert reads == sorted(reads) and len(reads) < len(set(wanted) - {-1})  # nearby lines share a read
    one_line = {(lines.starts[j], lines.ends[j]) for j in range(60)}
    assert all(end - start <= 64 or (start, end) in one_line for start, end in reads)
    # a select() out of file order reads correctly too
    chosen = lines.select([40, 2, 33, 1])
    assert chosen.take([3, 0, 2, 1]) == [rows[1], rows[40], rows[33], rows[2]]
    # nothing parsed is kept: a row taken again is parsed again, unchanged by what a caller did
    first = lines.take([5])[0]
    first["text"] = "changed"
    assert lines.take([5]) == [rows[5]]
    with pytest.raises(IndexError):
        lines.take([60])
