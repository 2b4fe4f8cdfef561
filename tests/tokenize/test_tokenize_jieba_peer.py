"""Peer check: Viterbi decoding with jieba's dictionary agrees with ``jieba.cut(text, HMM=False)``.

jieba's dictionary mode is a unigram model: it builds the DAG of dictionary words over the
characters of a Chinese run and picks the route maximising ``Σ log(freq(w) / total)``, where a
character missing from the dictionary counts as frequency 1. We load jieba's ``dict.txt`` as pieces
with ``log(freq / total)`` and give every single byte ``−log(total) / 3 − 1e-9``, so a 3-byte
character missing from the dictionary costs jieba's ``log(1 / total)`` (the ``1e-9`` keeps a known
character of frequency 1 ahead of its own three bytes despite float rounding). Our Viterbi then
maximises the same objective, over bytes instead of characters.

Where the two may still differ (documented in docs/tokenizer.md):

- **ties**: jieba's dynamic programme runs right to left and keeps, among equal scores, the route
  whose *first* word is longest (``max((score, x))``); ours runs left to right and keeps the
  longest *last* piece. Equal sums of log-frequencies happen with integer frequencies;
- **rounding**: the two programmes add the same floats in different orders, so near-ties can flip;
- jieba glues consecutive single ASCII letters/digits, so the comparison is on pure-Han runs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from formerlab.tokenize import UnigramTokenizer

jieba = pytest.importorskip("jieba")
pytest.importorskip("numba")  # 350k pieces: the reference backend would be slow

# Written for this test (no downloads): everyday, technical and literary sentences.
TEXT = """
今天天气很好，我们一起去公园散步。公园里有很多人在跑步、打太极拳，还有小朋友在放风筝。
自然语言处理是人工智能领域中的一个重要方向，它研究能实现人与计算机之间用自然语言进行有效通信的各种理论和方法。
分词是中文信息处理的基础工作，因为中文的词与词之间没有明显的分隔符，所以需要借助词典和统计模型来确定词的边界。
我们在野生动物园玩得很开心，研究生命的起源是一件有意义的事情。
随着互联网技术的快速发展，越来越多的企业开始重视数据的价值，并且投入大量资源建设自己的数据平台。
春天来了，山上的花都开了，红的像火，粉的像霞，白的像雪。小草从土里钻出来，嫩嫩的，绿绿的。
这个问题的关键在于如何在保证准确率的前提下，尽可能地提高算法的运行效率，降低计算成本。
他每天早上六点起床，先读半个小时的书，然后吃早饭，骑自行车去学校上课。
经过反复的试验和论证，研究人员终于找到了一种既经济又环保的新材料，可以广泛应用于建筑行业。
老师告诉我们，学习外语最重要的是坚持，每天都要听说读写，不能三天打鱼两天晒网。
北京是中国的首都，有着悠久的历史和灿烂的文化，每年都吸引着成千上万的游客前来参观。
这家医院新引进了一批先进的医疗设备，大大提高了疾病诊断的准确性和治疗的效果。
""".strip()


@pytest.fixture(scope="module")
def jieba_tokenizer() -> UnigramTokenizer:
    path = Path(jieba.__file__).with_name("dict.txt")
    freqs: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            word, freq = line.split(" ")[:2]
            freqs[word] = int(freq)
    log_total = math.log(sum(freqs.values()))
    pieces = {w.encode(): math.log(f) - log_total for w, f in freqs.items() if f > 0}
    return UnigramTokenizer(pieces, byte_score=-log_total / 3 - 1e-9)


def _boundaries(tokens: list[bytes]) -> list[int]:
    cuts, pos = [], 0
    for token in tokens:
        pos += len(token)
        cuts.append(pos)
    return cuts


def test_viterbi_agrees_with_jieba_without_hmm(jieba_tokenizer):
    runs = re.findall(r"[\u4e00-\u9fd5]+", TEXT)
    assert len(runs) > 40
    same_runs = 0
    ours_total = jieba_total = common = 0
    for run in runs:
        ref = [w.encode() for w in jieba.cut(run, HMM=False)]
        data = run.encode()
        # merge byte pieces back into characters: keep only cuts on character boundaries
        char_cuts = set(_boundaries([c.encode() for c in run]))
        ours = [c for c in _boundaries(jieba_tokenizer.tokenize(data)) if c in char_cuts]
        theirs = _boundaries(ref)
        same_runs += ours == theirs
        ours_total += len(ours)
        jieba_total += len(theirs)
        common += len(set(ours) & set(theirs))
    run_agreement = same_runs / len(runs)
    precision, recall = common / ours_total, common / jieba_total
    print(f"jieba peer: {same_runs}/{len(runs)} runs identical, "
          f"token precision {precision:.4f}, recall {recall:.4f}")
    assert run_agreement >= 0.95
    assert min(precision, recall) >= 0.99


def test_tie_rules_differ_as_documented(tmp_path):
    """甲乙|丙 and 甲|乙丙 score the same: jieba keeps the longest first word, we the longest last."""
    dict_path = tmp_path / "tiny_dict.txt"
    dict_path.write_text("甲乙 2 n\n丙 1 n\n甲 1 n\n乙丙 2 n\n乙 1 n\n", encoding="utf-8")
    tk = jieba.Tokenizer(dictionary=str(dict_path))
    tk.tmp_dir = str(tmp_path)
    assert list(tk.cut("甲乙丙", HMM=False)) == ["甲乙", "丙"]
    log_total = math.log(7)
    pieces = {w.encode(): math.log(f) - log_total
              for w, f in {"甲乙": 2, "丙": 1, "甲": 1, "乙丙": 2, "乙": 1}.items()}
    ours = UnigramTokenizer(pieces, byte_score=-log_total / 3 - 1e-9)
    assert [p.decode() for p in ours.tokenize("甲乙丙")] == ["甲", "乙丙"]
