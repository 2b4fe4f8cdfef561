"""``formerlab tokenizer train|encode|sample|stats`` through ``add_subparser`` (in process)."""

from __future__ import annotations

import argparse
import json

import pytest

from formerlab.tokenize import UnigramTokenizer
from formerlab.tokenize.cli import add_subparser, main


def _run(capsys, *argv: str) -> str:
    assert main(["tokenizer", *argv]) == 0
    return capsys.readouterr().out


@pytest.fixture
def corpus_dir(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.py").write_text("def watch(self):\n    return self.watching\n" * 30
                                         + f"x = {i}\n", encoding="utf-8")
    (folder / "skip.bin").write_bytes(b"\x00\x01" * 50)
    return folder


def test_add_subparser_wires_a_tokenizer_command():
    parser = argparse.ArgumentParser(prog="formerlab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_subparser(sub)
    args = parser.parse_args(["tokenizer", "encode", "--vocab", "v.json", "hi"])
    assert callable(args.func) and args.text == "hi"
    for cmd in ("train", "encode", "sample", "stats"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["tokenizer", cmd, "--help"])
        assert exit_info.value.code == 0


def test_cli_round_trip(capsys, corpus_dir, tmp_path):
    vocab = tmp_path / "vocab.json"
    out = json.loads(_run(capsys, "train", str(corpus_dir), "--glob", "*.py", "--vocab-size",
                          "300", "--output", str(vocab), "--no-progress"))
    assert out["files"] == 3 and out["vocab_size"] <= 300
    tok = UnigramTokenizer.load(vocab)
    ids = [int(x) for x in _run(capsys, "encode", "--vocab", str(vocab), "return self").split()]
    assert tok.decode(ids) == "return self"
    pieces = json.loads(_run(capsys, "encode", "--vocab", str(vocab), "--pieces", "--add-bos",
                             "return self"))
    assert pieces[0] == "<bos>" and "".join(pieces[1:]) == "return self"
    lines = _run(capsys, "sample", "--vocab", str(vocab), "--alpha", "0.5", "--seed", "0",
                 "--num-samples", "4", "watching").splitlines()
    assert len(lines) == 4 and all(line.replace(" | ", "") == "watching" for line in lines)
    again = _run(capsys, "sample", "--vocab", str(vocab), "--alpha", "0.5", "--seed", "0",
                 "--num-samples", "4", "watching").splitlines()
    assert again == lines
    stats = json.loads(_run(capsys, "stats", "--vocab", str(vocab), str(corpus_dir), "--glob",
                            "*.py"))
    assert stats["lossless"] and stats["bytes_per_token"] > 2 and stats["vocab_size"] <= 300
    src = tmp_path / "in.txt"
    src.write_text("return self", encoding="utf-8")
    from_file = _run(capsys, "encode", "--vocab", str(vocab), "--input", str(src)).split()
    assert [int(x) for x in from_file] == ids


def test_cli_errors(capsys, tmp_path):
    assert main(["tokenizer", "train", str(tmp_path / "missing"), "--vocab-size", "300",
                 "--output", str(tmp_path / "v.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{}", encoding="utf-8")
    assert main(["tokenizer", "encode", "--vocab", str(bad), "x"]) == 2
    assert "formerlab-unigram" in capsys.readouterr().err
    UnigramTokenizer({}).save(tmp_path / "v.json")
    assert main(["tokenizer", "sample", "--vocab", str(tmp_path / "v.json"), "--alpha", "-1",
                 "x"]) == 2
    assert "alpha" in capsys.readouterr().err
    assert main(["tokenizer", "encode", "--vocab", str(tmp_path / "v.json")]) == 2
    assert "TEXT" in capsys.readouterr().err
