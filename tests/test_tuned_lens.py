"""gemma_lab.tuned_lens: an untrained lens is the logit lens, training lowers KL on held-out text,
the model is left untouched, and shapes, dtypes and refusals are as documented."""

from __future__ import annotations

import itertools

import pytest
import torch

import gemma_lab
from gemma_lab import interp, tuned_lens
from gemma_lab.tiny import corpus

PRESETS = {1: "test-gemma", 2: "test-gemma2", 3: "test-gemma3"}


def small_model(family: int, seed: int = 0) -> gemma_lab.Gemma:
    cfg = gemma_lab.GemmaConfig.from_preset(PRESETS[family])
    return gemma_lab.init_weights(gemma_lab.Gemma(cfg), seed=seed, std=0.1).eval()


def tokens(batch, seq, seed):
    return torch.randint(3, 512, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", [1, 2, 3])
def test_an_untrained_lens_is_the_logit_lens(family):
    model = small_model(family)
    ids = tokens(1, 9, 0)
    stack = tuned_lens.residual_stack(model, ids)
    n_layers, d_model = model.cfg.n_layers, model.cfg.d_model
    assert stack.shape == (n_layers + 1, 1, 9, d_model)
    lens = tuned_lens.TunedLens(model)
    assert lens.labels == interp.logit_lens(model, ids[0]).labels
    assert all(p.dtype == torch.float32 for p in lens.parameters())
    logits = lens.logits(model, stack)  # [row, batch, pos, vocab]
    assert logits.shape == (n_layers + 1, 1, 9, model.cfg.vocab_size) and logits.dtype == torch.float32
    assert torch.equal(logits, interp.unembed(model, stack).float())  # zero translators: exactly the logit lens
    with torch.no_grad():
        assert torch.equal(logits[-1], model(ids).float())  # the last row is the output
    kl = tuned_lens.lens_kl(model, ids)
    assert kl.shape == (n_layers + 1,) and float(kl[-1]) == 0.0 and bool((kl[:-1] > 0).all())
    torch.testing.assert_close(tuned_lens.lens_kl(model, ids, lens), kl)
    # lens_kl is the KL of the logit lens's rows against the output, averaged over positions
    log_p = torch.log_softmax(logits[-1], -1)
    log_q = torch.log_softmax(logits[0], -1)
    torch.testing.assert_close(kl[0], (log_p.exp() * (log_p - log_q)).sum(-1).mean())


def corpus_rows(tokenizer, split, n_docs, seq=64):
    """``<bos> document <eos>`` packed into rows of ``seq`` tokens, from the tiny model's own corpus."""
    ids = []
    for document in itertools.islice(corpus.iter_documents(0, split), n_docs):
        ids += tokenizer.encode(document) + [tokenizer.eos_id]
    n_rows = len(ids) // seq
    return torch.tensor(ids[:n_rows * seq]).view(n_rows, seq)


def test_training_lowers_held_out_kl_and_leaves_the_model_alone():
    """On the tiny model and text it knows (held-out documents for the measure), a few dozen steps
    already cut the KL of every row but the last well below the logit lens's."""
    model = gemma_lab.load_pretrained("tiny")
    tokenizer = gemma_lab.load_tokenizer("tiny")
    before = {name: p.clone() for name, p in model.state_dict().items()}
    trainable = [p.requires_grad for p in model.parameters()]
    train, held = corpus_rows(tokenizer, "train", 150), corpus_rows(tokenizer, "heldout", 30)
    logit_kl = tuned_lens.lens_kl(model, held)
    lens = tuned_lens.train_tuned_lens(model, train, steps=40, lr=1e-2, batch_positions=256, progress=False)
    tuned_kl = tuned_lens.lens_kl(model, held, lens)
    assert bool((tuned_kl[:-1] < 0.5 * logit_kl[:-1]).all()), (logit_kl, tuned_kl)
    assert float(tuned_kl[-1]) == 0.0
    assert not lens.training
    for name, p in model.state_dict().items():
        assert torch.equal(p, before[name]), name
    assert [p.requires_grad for p in model.parameters()] == trainable  # as it was
    assert all(p.grad is None for p in model.parameters())
    # reproducible from the seed
    again = tuned_lens.train_tuned_lens(model, train, steps=3, batch_positions=16, progress=False)
    same = tuned_lens.train_tuned_lens(model, train, steps=3, batch_positions=16, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), same.parameters()))


def test_padding_is_left_out_and_bad_input_is_refused():
    model = small_model(2)
    ids = tokens(2, 6, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * 6])
    padded = tuned_lens.lens_kl(model, ids, attention_mask=mask)
    alone = torch.stack([tuned_lens.lens_kl(model, ids[0, 2:]) * 4, tuned_lens.lens_kl(model, ids[1]) * 6]).sum(0) / 10
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)
    lens = tuned_lens.TunedLens(model)
    with pytest.raises(ValueError, match="rows"):
        lens.translate(torch.zeros(2, 3, model.cfg.d_model))
    with pytest.raises(ValueError, match="steps"):
        tuned_lens.train_tuned_lens(model, ids, steps=-1)
