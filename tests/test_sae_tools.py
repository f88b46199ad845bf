"""Feature tools (contexts, histograms, logit effects, ablation, steering) and SAE training (TopK + AuxK):
each checked against an independent computation on the tiny Gemma, with small random or quickly trained SAEs."""

from __future__ import annotations

import pytest
import torch

import gemma_lab
from gemma_lab.sae import SAEConfig, load_sae, make_sae
from gemma_lab.sae import features as F
from gemma_lab.sae import training

LAYER = 1
SITE = f"blocks.{LAYER}.hook_resid_post"


@pytest.fixture(scope="module")
def model():
    return gemma_lab.load_pretrained("tiny")


@pytest.fixture(scope="module")
def rows():
    generator = torch.Generator().manual_seed(3)
    lengths = [9, 14, 6, 11, 14]
    return [[2] + torch.randint(8, 3000, (n - 1,), generator=generator).tolist() for n in lengths]


@pytest.fixture(scope="module")
def sae():
    sae = make_sae(SAEConfig(d_in=128, d_sae=64, architecture="relu", hook_name=SITE))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return sae


def test_feature_activations_and_contexts(model, sae, rows):
    acts = F.feature_activations(model, sae, torch.tensor(rows[1]))
    _, cache = model.run_with_cache(torch.tensor(rows[1]), names_filter=SITE)
    torch.testing.assert_close(acts, sae.encode(cache[SITE]))

    feature = int(acts[0, 1:].sum(dim=0).argmax())
    found = F.top_activating_contexts(model, sae, rows, feature, k=5, before=3, after=1, batch_size=2)
    assert found.values.tolist() == sorted(found.values.tolist(), reverse=True)
    # every reported value is the feature's activation at that token, computed one row at a time
    all_values = []
    for r, row in enumerate(rows):
        row_acts = F.feature_activations(model, sae, torch.tensor(row))[0, :, feature]
        all_values += row_acts[1:].tolist()
        for value, rr, pos in zip(found.values, found.rows, found.positions):
            if rr == r:
                assert pos > 0
                torch.testing.assert_close(value, row_acts[pos], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(found.values, torch.tensor(sorted(all_values, reverse=True)[:5]), rtol=1e-5, atol=1e-5)
    for context, acts_in, centre, r, pos in zip(found.contexts, found.context_acts, found.centre, found.rows,
                                                found.positions):
        assert context[centre] == rows[r][pos] and len(context) <= 5
        torch.testing.assert_close(acts_in[centre], found.values[found.contexts.index(context)])
    with pytest.raises(IndexError, match="outside this SAE's 64 features"):
        F.top_activating_contexts(model, sae, rows, 64)


def test_activation_histogram(model, sae, rows):
    feature = 3
    hist = F.activation_histogram(model, sae, rows, feature, bins=10)
    acts = torch.cat([F.feature_activations(model, sae, torch.tensor(row))[0, 1:, feature] for row in rows])
    assert hist.frequency == pytest.approx(float((acts > 0).float().mean()))
    assert int(hist.counts.sum()) == int((acts > 0).sum()) == len(hist.values)


def test_logit_effects_match_interps_attribution(model, sae, rows):
    feature = 5
    tokens = torch.tensor(rows[1])
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.startswith("ln_final"))
    pos = 7
    inv_rms = cache["ln_final.hook_inv_rms"][0, pos]
    effects = F.feature_logit_effects(model, sae, feature, k=5, inv_rms=inv_rms)
    # interp's direct logit attribution of the same direction, as if written into the stream at pos
    stack = sae.W_dec[feature].detach().reshape(1, 1, 128).expand(1, 1, 128)[:, :, None].expand(1, 1, 1, 128)
    stack = stack.expand(1, 1, tokens.shape[0], 128)[:, :, pos]
    some_tokens = torch.tensor([10, 200, 3000])
    for token in some_tokens:
        attr = cache.logit_attrs(stack, int(token), pos_slice=pos)
        torch.testing.assert_close(effects.effects[token], attr.reshape(()), rtol=1e-5, atol=1e-5)
    assert effects.top_values[0] == effects.effects.max() and effects.bottom_values[0] == effects.effects.min()
    no_run = F.feature_logit_effects(model, sae, feature, k=5)
    assert torch.equal(no_run.top_tokens, effects.top_tokens)  # inv_rms only rescales


def test_ablate_features(model, sae, rows):
    tokens = torch.tensor(rows[3])
    plain_logits = model(tokens)
    acts = F.feature_activations(model, sae, tokens)
    feature = int(acts[0, 1:].sum(dim=0).argmax())
    sae.use_error_term = False
    with F.ablate_features(model, sae, feature):
        _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{LAYER + 1}.hook_resid_pre")
        ablated_logits = model(tokens)
    assert sae.use_error_term is False
    _, plain = model.run_with_cache(tokens, names_filter=SITE)
    expected = plain[SITE] - acts[..., feature, None] * sae.W_dec[feature].detach()
    torch.testing.assert_close(cache[f"blocks.{LAYER + 1}.hook_resid_pre"], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ablated_logits, plain_logits)
    with F.ablate_features(model, sae, []):  # nothing ablated: exactly the plain model
        assert torch.equal(model(tokens), plain_logits)
    assert not any(p.has_hooks for p in model.hook_dict.values())


def test_steer_with_feature(model, sae, rows):
    tokens = torch.tensor(rows[1])
    _, plain = model.run_with_cache(tokens, names_filter=SITE)
    with F.steer_with_feature(model, sae, 2, coeff=4.0, positions=[3, 5]):
        _, steered = model.run_with_cache(tokens, names_filter=SITE)
    shift = torch.zeros_like(plain[SITE])
    shift[:, [3, 5]] = 4.0 * sae.W_dec[2].detach()
    torch.testing.assert_close(steered[SITE], plain[SITE] + shift)
    assert not any(p.has_hooks for p in model.hook_dict.values())


# ---- training ------------------------------------------------------------------------------------------


def synthetic_activations(n=4096, d_in=32, n_true=48, active=3, seed=0):
    """Sparse combinations of fixed random unit directions (``seed`` draws the combinations): data an
    SAE can explain well."""
    directions = torch.nn.functional.normalize(torch.randn(n_true, d_in, generator=torch.Generator().manual_seed(99)),
                                               dim=-1)
    generator = torch.Generator().manual_seed(seed)
    codes = torch.zeros(n, n_true)
    for i in range(n):
        chosen = torch.randperm(n_true, generator=generator)[:active]
        codes[i, chosen] = torch.rand(active, generator=generator) * 2 + 0.5
    return codes @ directions


def test_topk_training_learns_and_is_reproducible(tmp_path):
    data = synthetic_activations()
    cfg = SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, hook_name=SITE, apply_b_dec_to_input=True)
    train = training.TrainConfig(d_sae=64, k=4, steps=150, batch_size=256, lr=3e-3, warmup=10, dead_after=2000)
    sae, log = training.train_sae(cfg, data, train=train, progress=False)
    again, _ = training.train_sae(cfg, data, train=train, progress=False)
    for (name, a), b in zip(sae.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert log["fvu"][-1] < 0.5 * log["fvu"][0]
    metrics = training.evaluate(sae, synthetic_activations(n=512, seed=1))
    assert metrics["l0"] <= 4 and metrics["fvu"] < 0.3
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))  # unit-norm decoder rows

    training.save_sae(sae, tmp_path / "sae", extra={"note": "test"})
    loaded = load_sae(tmp_path / "sae")
    x = synthetic_activations(n=64, seed=2)
    assert torch.equal(loaded.encode(x), sae.encode(x)) and torch.equal(loaded(x), sae(x))


def test_transcoder_training_and_aux_loss():
    x = synthetic_activations(n=2048, seed=3)
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(4)) / 6
    y = torch.relu(x @ w)  # an "MLP" to imitate
    cfg = SAEConfig(d_in=32, d_sae=64, architecture="topk", k=6, hook_name="blocks.0.ln2.hook_normalized",
                    hook_name_out="blocks.0.hook_mlp_out")
    train = training.TrainConfig(d_sae=64, k=6, steps=120, batch_size=256, lr=3e-3, warmup=10, dead_after=10 ** 9)
    tc, log = training.train_sae(cfg, x, y, train, progress=False)
    assert log["fvu"][-1] < 0.6 * log["fvu"][0]
    # AuxK: with every feature dead, the loss asks the top k_aux dead features to explain the error
    pre = torch.randn(8, 64)
    error = torch.randn(8, 32)
    everything_dead = torch.ones(64, dtype=torch.bool)
    aux = training._aux_loss(tc, pre, error, everything_dead, k_aux=5)
    top = pre.topk(5, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    expected = ((acts @ tc.W_dec - error) ** 2).sum() / ((error - error.mean(dim=0)) ** 2).sum()
    torch.testing.assert_close(aux, expected)
    assert training._aux_loss(tc, pre, error, torch.zeros(64, dtype=torch.bool), 5) == 0
