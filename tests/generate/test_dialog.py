"""DialoGPT-style dialogue: exact token layouts (golden cases on a toy vocabulary, truncation), the
loss masks, the causal and UniLM masks on a real CausalLM, the collator, and the ChatBot's
segment flip, stop at [SEP] and length limit."""

from __future__ import annotations

import pytest
import torch

from formerlab import ModelConfig
from formerlab.generate.dialog import (
    ChatBot,
    DialogueCollator,
    build_dialogue_lm_example,
    build_dialogue_prompt,
    dialogue_attention_mask,
)
from formerlab.models import CausalLM

VOCAB = ["[PAD]", "[CLS]", "[SEP]", "[speaker1]", "[speaker2]", "hi", "there", "how", "are", "you",
         "fine", "thanks", "bye"]


class ToyTokenizer:
    """BERT-like: encode adds [CLS] … [SEP] unless add_special_tokens=False."""

    cls_token_id, sep_token_id, pad_token_id, unk_token_id = 1, 2, 0, None

    def encode(self, text, add_special_tokens=True):
        ids = [VOCAB.index(w) for w in text.split()]
        return [1, *ids, 2] if add_special_tokens else ids

    def convert_tokens_to_ids(self, token):
        return VOCAB.index(token) if token in VOCAB else None

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(VOCAB[i] for i in ids if not (skip_special_tokens and i < 5))


TOK = ToyTokenizer()
DIALOG = ["hi there", "how are you", "fine thanks"]
SPEAKERS = ("[speaker1]", "[speaker2]")


# --- layouts ---------------------------------------------------------------------------------------
def test_su_layout_segments_and_losses():
    ex = build_dialogue_lm_example(DIALOG, TOK)
    assert ex.token_ids == [1, 5, 6, 2, 7, 8, 9, 2, 10, 11, 2]
    assert ex.segment_ids == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert ex.loss_mask == [0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert ex.response_start == 8
    assert build_dialogue_lm_example(DIALOG, TOK, loss_on="responses").loss_mask == \
        [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert build_dialogue_lm_example(DIALOG, TOK, loss_on="last").loss_mask == [0] * 8 + [1, 1, 1]


def test_su_layout_truncation_stops_at_the_first_overflow():
    assert build_dialogue_lm_example(DIALOG, TOK, maxlen=11).token_ids == \
        [1, 5, 6, 2, 7, 8, 9, 2, 10, 11, 2]
    assert build_dialogue_lm_example(DIALOG, TOK, maxlen=10).token_ids == [1, 5, 6, 2, 7, 8, 9, 2]
    assert build_dialogue_lm_example(DIALOG, TOK, maxlen=7).token_ids == [1, 5, 6, 2]
    # "bye" would fit after the first turn, but the loop stops at the first that overflows
    ex = build_dialogue_lm_example(["hi there", "how are you", "bye"], TOK, maxlen=6)
    assert ex.token_ids == [1, 5, 6, 2] and ex.segment_ids == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="does not fit maxlen = 3"):
        build_dialogue_lm_example(DIALOG, TOK, maxlen=3)


def test_speaker_token_layout_is_cdial_gpt():
    ex = build_dialogue_lm_example(DIALOG, TOK, speaker_tokens=SPEAKERS, loss_on="last")
    assert ex.token_ids == [1, 3, 5, 6, 4, 7, 8, 9, 3, 10, 11, 2]
    assert ex.segment_ids == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert ex.loss_mask == [0] * 9 + [1, 1, 1]  # the response and its [SEP], not its speaker
    assert ex.response_start == 8
    resp = build_dialogue_lm_example(DIALOG, TOK, speaker_tokens=SPEAKERS, loss_on="responses")
    assert resp.loss_mask == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    every = build_dialogue_lm_example(DIALOG, TOK, speaker_tokens=(3, 4))
    assert every.loss_mask == [0] + [1] * 11
    # truncation keeps the most recent turns
    short = build_dialogue_lm_example(DIALOG, TOK, maxlen=9, speaker_tokens=SPEAKERS)
    assert short.token_ids == [1, 4, 7, 8, 9, 3, 10, 11, 2]
    assert short.segment_ids == [0, 1, 1, 1, 1, 0, 0, 0, 0]


def test_prompts_and_the_response_segment():
    assert build_dialogue_prompt(DIALOG[:2], TOK) == ([1, 5, 6, 2, 7, 8, 9, 2],
                                                      [0, 0, 0, 0, 1, 1, 1, 1], 0)
    assert build_dialogue_prompt(DIALOG, TOK)[2] == 1
    assert build_dialogue_prompt(DIALOG[:2], TOK, speaker_tokens=SPEAKERS) == (
        [1, 3, 5, 6, 4, 7, 8, 9, 3], [0, 0, 0, 0, 1, 1, 1, 1, 0], 0)
    ids, seg, _ = build_dialogue_prompt(DIALOG, TOK, maxlen=8)  # the oldest turn is dropped
    assert ids == [1, 7, 8, 9, 2, 10, 11, 2] and seg == [0, 1, 1, 1, 1, 0, 0, 0]
    assert build_dialogue_prompt([], TOK) == ([1], [0], 0)


def test_bad_input():
    class Bare:
        def encode(self, text):
            return [5]

    with pytest.raises(ValueError, match="start_token_id"):
        build_dialogue_lm_example(DIALOG, Bare())
    assert build_dialogue_lm_example(["x"], Bare(), start_token_id=1, sep_token_id=2).token_ids == \
        [1, 5, 2]
    with pytest.raises(ValueError, match="sep_token_id"):
        build_dialogue_lm_example(DIALOG, Bare(), start_token_id=1)
    with pytest.raises(ValueError, match="speaker token"):
        build_dialogue_lm_example(DIALOG, TOK, speaker_tokens=("[user]", "[bot]"))
    with pytest.raises(ValueError, match="two tokens"):
        build_dialogue_lm_example(DIALOG, TOK, speaker_tokens=("[speaker1]",))
    with pytest.raises(ValueError, match="loss_on"):
        build_dialogue_lm_example(DIALOG, TOK, loss_on="user")
    with pytest.raises(ValueError, match="maxlen"):
        build_dialogue_lm_example(DIALOG, TOK, maxlen=1)
    with pytest.raises(ValueError, match="utterances"):
        build_dialogue_lm_example([], TOK)
    with pytest.raises(ValueError, match="mask"):
        DialogueCollator(mask="prefix-lm")


# --- masks and the collator on a real model ------------------------------------------------------
def tiny_lm(seed=0):
    m = CausalLM(ModelConfig(vocab_size=len(VOCAB), hidden_size=32, num_layers=2, num_heads=4,
                             type_vocab_size=2))
    m.reset_parameters(torch.Generator().manual_seed(seed))
    return m.eval()


def test_mask_family():
    causal = dialogue_attention_mask([3], 6, "causal")[0, 0]
    assert torch.equal(causal, torch.ones(6, 6, dtype=torch.bool).tril())
    uni = dialogue_attention_mask([3], 6, "unilm")[0, 0]
    assert bool(uni[:3, :3].all()) and not bool(uni[:3, 3:].any())  # history: both ways
    assert torch.equal(uni[3:, 3:], torch.ones(3, 3, dtype=torch.bool).tril())  # response: causal
    assert bool(uni[3:, :3].all())
    padded = dialogue_attention_mask([2], 5, "unilm", torch.tensor([[1, 1, 1, 0, 0]]))[0, 0]
    assert not bool(padded[:3, 3:].any()) and bool(padded[4, 4])


def test_causal_and_unilm_attention_on_a_causal_lm():
    model = tiny_lm()
    ex = build_dialogue_lm_example(DIALOG, TOK)
    batch = DialogueCollator(0, mask="unilm")([ex])
    ids = batch["input_ids"]
    changed = ids.clone()
    changed[0, 6] = 12  # a later history token
    with torch.no_grad():
        base = model(ids, token_type_ids=batch["token_type_ids"]).logits
        late = model(changed, token_type_ids=batch["token_type_ids"]).logits
        ubase = model(ids, attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"]).logits
        ulate = model(changed, attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"]).logits
    torch.testing.assert_close(base[0, :6], late[0, :6])  # causal: the past is unchanged
    assert (ubase[0, :6] - ulate[0, :6]).abs().max() > 1e-4  # UniLM: the history sees ahead
    resp = ids.clone()
    resp[0, 9] = 12  # inside the final response: the history cannot see it
    with torch.no_grad():
        uresp = model(resp, attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"]).logits
    torch.testing.assert_close(ubase[0, :9], uresp[0, :9])


def test_collator_labels_and_padding():
    a = build_dialogue_lm_example(DIALOG, TOK, loss_on="responses")
    b = build_dialogue_lm_example(["hi", "bye"], TOK, loss_on="responses")
    batch = DialogueCollator(pad_token_id=0)([a, b])
    assert batch["input_ids"].tolist() == [a.token_ids, [1, 5, 2, 12, 2] + [0] * 6]
    assert batch["labels"].tolist()[0] == [-100, -100, -100, -100, 7, 8, 9, 2, -100, -100, -100]
    assert batch["labels"].tolist()[1] == [-100, -100, -100, 12, 2] + [-100] * 6
    assert batch["attention_mask"].tolist()[1] == [1] * 5 + [0] * 6
    assert batch["token_type_ids"].tolist()[1] == [0, 0, 0, 1, 1] + [0] * 6
    model = tiny_lm()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    uni = DialogueCollator(0, mask="unilm")([build_dialogue_lm_example(DIALOG, TOK)])
    assert uni["labels"].tolist()[0] == [-100] * 8 + [10, 11, 2]  # only the final response
    assert uni["attention_mask"].shape == (1, 1, 11, 11)


def test_training_reduces_the_response_loss():
    g = torch.Generator().manual_seed(0)
    words = list(range(5, len(VOCAB)))
    dialogs = []
    for _ in range(32):  # the reply repeats the question's first word: learnable
        q = [VOCAB[w] for w in torch.tensor(words)[torch.randint(0, 8, (3,), generator=g)]]
        dialogs.append([" ".join(q), q[0] + " " + q[0]])
    batch = DialogueCollator(0)([build_dialogue_lm_example(d, TOK, loss_on="responses")
                                 for d in dialogs])
    model = tiny_lm().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


# --- the chat bot ---------------------------------------------------------------------------------
class ScriptedLM(torch.nn.Module):
    """Emits ``script`` token by token (then repeats its last entry), recording segments."""

    def __init__(self, script):
        super().__init__()
        self.script, self.seen = script, []
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, token_type_ids=None, past_key_values=None, use_cache=False):
        step = 0 if past_key_values is None else past_key_values + 1
        self.seen.append(token_type_ids.tolist())
        logits = torch.full((1, input_ids.shape[1], len(VOCAB)), -10.0)
        logits[0, -1, self.script[min(step, len(self.script) - 1)]] = 10.0
        return type("Out", (), {"logits": logits, "past_key_values": step})()


def test_chatbot_flips_the_segment_and_stops_at_sep():
    model = ScriptedLM([10, 11, 2, 12])
    bot = ChatBot(model, TOK)
    reply = bot.respond(DIALOG[:1], top_k=1, generator=torch.Generator().manual_seed(0))
    assert reply == "fine thanks"
    assert model.seen[0] == [[0, 0, 0, 0]] and model.seen[1:] == [[[1]], [[1]]]
    model = ScriptedLM([10, 11, 2])
    ChatBot(model, TOK).respond(DIALOG[:2], top_k=1)
    assert model.seen[1] == [[0]]  # after a turn of segment 1 the bot speaks as segment 0


def test_chatbot_stops_at_max_len_and_samples_reproducibly():
    assert len(ChatBot(ScriptedLM([10]), TOK).respond_ids(DIALOG[:1], max_len=7)) == 7
    bot = ChatBot(tiny_lm(seed=3), TOK)
    a = bot.respond_ids(DIALOG[:1], top_k=5, max_len=12, generator=torch.Generator().manual_seed(1))
    b = bot.respond_ids(DIALOG[:1], top_k=5, max_len=12, generator=torch.Generator().manual_seed(1))
    assert a == b and len(a) <= 12 and 2 not in a
    with pytest.raises(ValueError, match="top_k"):
        bot.respond(DIALOG[:1], top_k=0)
