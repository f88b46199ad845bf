"""The exercise checker: every exercise's reference and solution pass, every registered mistake is
recognised by its hint, and the verdicts (not attempted, error, wrong with a difference) read right.

Covers all registered exercises, whichever module registers them. The references are thin wrappers
around the package; the tests at the end check that the written-out versions the mistakes are built
from (``_attention_layer``, ``_gemma_forward``, ...) equal the package when no slip is switched on,
so each mistake really is one slip away from the right answer.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest
import torch

from gemma_lab import exercises
from gemma_lab.exercises import (
    ERROR,
    FAILED,
    NOT_ATTEMPTED,
    CheckResult,
    check,
    fill_in_solutions,
    get_exercise,
    list_exercises,
    outputs_match,
    solution,
    solutions_dir,
)
from gemma_lab.exercises import (
    checking,
    lesson01_tokenization,
    lesson02_embeddings_and_rmsnorm,
    lesson04_attention,
    lesson06_full_forward_pass,
)
from gemma_lab.exercises._trials import _grouped

ROOT = Path(__file__).resolve().parent.parent
NAMES = list_exercises()
MISTAKES = [(name, hint) for name in NAMES for hint in get_exercise(name).mistakes]


def _solution_module(notebook: str):
    path = solutions_dir() / f"{notebook}.py"
    spec = importlib.util.spec_from_file_location(f"solutions_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _perturbed(value):
    """A wrong answer of the right type and shape: one entry changed."""
    if isinstance(value, torch.Tensor):
        wrong = value.clone()
        flat = wrong.view(-1)
        if flat.numel() == 0:
            return torch.ones(1)
        if wrong.dtype == torch.bool:
            flat[0] = ~flat[0]
        elif wrong.is_floating_point():
            flat[0] = 0.0 if torch.isinf(flat[0]) else flat[0] + 1.0 + flat[0].abs()
        else:
            flat[0] += 1
        return wrong
    if isinstance(value, (tuple, list)):
        return type(value)([_perturbed(value[0]), *value[1:]])
    if isinstance(value, str):
        return value + "#"
    if isinstance(value, (int, float)):
        return value + 1 + abs(value)
    raise TypeError(f"no perturbation for {type(value)}")


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name):
    result = check(name, get_exercise(name).reference)
    assert result.passed, str(result)


@pytest.mark.parametrize("name", NAMES)
def test_solution_passes(name):
    registered = get_exercise(name)
    assert registered.notebook, f"exercise {name!r} names no notebook, so it has no solution file"
    function = getattr(_solution_module(registered.notebook), name)
    result = check(name, function)
    assert result.passed, str(result)


@pytest.mark.parametrize("name", NAMES)
def test_solution_source_is_the_function(name):
    source = solution(name)
    assert isinstance(source, str)
    assert source.lstrip().startswith(f"def {name}("), source[:80]
    assert "<details>" in source._repr_html_() and name in source._repr_html_()


@pytest.mark.parametrize("name, hint", MISTAKES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(MISTAKES)])
def test_each_mistake_is_caught_with_its_hint(name, hint):
    result = check(name, get_exercise(name).mistakes[hint])
    assert result.status == FAILED, str(result)
    assert result.hint == hint, f"expected hint {hint!r}, got {result.hint!r}: {result.message}"
    assert "trial" in result.message


@pytest.mark.parametrize("name", NAMES)
def test_stub_is_not_attempted(name):
    def stub(*args):
        raise NotImplementedError

    result = check(name, stub)
    assert result.status == NOT_ATTEMPTED and not result.passed and result.hint is None
    assert str(result).startswith("○ ")


@pytest.mark.parametrize("name", NAMES)
def test_a_random_wrong_answer_gets_a_difference(name):
    reference = get_exercise(name).reference

    def wrong(*args):
        return _perturbed(reference(*args))

    result = check(name, wrong)
    assert result.status == FAILED and result.hint is None, str(result)
    assert result.message.startswith("trial 1 (")
    assert any(word in result.message for word in ("differs", "expected")), result.message


def test_an_exception_is_reported_with_its_message():
    def broken(*args):
        raise ValueError("shapes do not line up")

    result = check("rms_norm", broken)
    assert result.status == ERROR and not result.passed
    assert "ValueError: shapes do not line up" in result.message
    assert "x: float32 [" in result.message  # the trial's inputs are named


def test_torch_errors_learners_meet_get_a_hint():
    def forgot_keepdim(x, weight, eps):  # the classic: a [batch, pos] mean against [batch, pos, d_model]
        return x / torch.sqrt(x.pow(2).mean(-1) + eps) * (1 + weight)

    result = check("rms_norm", forgot_keepdim)
    assert result.status == ERROR and "must match the size of tensor b" in result.message
    assert result.hint is not None and "x[:, None]" in result.hint and "lines shapes up from the *right*" in result.hint

    def untransposed(x, w_gate, w_up, w_down):
        return x @ w_gate

    result = check("geglu", untransposed)
    assert result.status == ERROR and "cannot be multiplied" in result.message
    assert "x @ weight.T" in result.hint

    def plain_error(*args):
        raise ValueError("my own message")

    assert check("rms_norm", plain_error).hint is None


def test_wrong_shape_dtype_and_missing_return_are_named():
    def flat(x, weight, eps):
        return lesson02_embeddings_and_rmsnorm.rms_norm(x, weight, eps).flatten()

    def stays_fp64(x, weight, eps):
        return lesson02_embeddings_and_rmsnorm.rms_norm(x, weight, eps).double()

    def forgets_return(x, weight, eps):
        lesson02_embeddings_and_rmsnorm.rms_norm(x, weight, eps)

    assert "has shape" in check("rms_norm", flat).message
    assert "dtype float64, expected float32" in check("rms_norm", stays_fp64).message
    assert "forget to return" in check("rms_norm", forgets_return).message


def test_result_displays():
    passed = check("rms_norm", lesson02_embeddings_and_rmsnorm.rms_norm)
    assert passed and str(passed).startswith("✔ rms_norm") and "✔" in passed._repr_html_()
    failed = CheckResult("demo", FAILED, "x < y & z", hint="Is <b> escaped?")
    assert not failed and str(failed).startswith("✘ demo") and "Hint: Is <b> escaped?" in str(failed)
    page = failed._repr_html_()
    assert "✘" in page and "x &lt; y &amp; z" in page and "&lt;b&gt;" in page
    assert check("rms_norm", 42).status == ERROR


def test_outputs_match_rules():
    inf = float("inf")
    assert outputs_match(torch.tensor([1.0, -inf]), torch.tensor([1.0 + 1e-6, -inf]))
    assert not outputs_match(torch.tensor([0.0]), torch.tensor([-inf]))
    assert not outputs_match(torch.tensor([1.0]), torch.tensor([1.0], dtype=torch.float64))
    assert not outputs_match(torch.zeros(2, 3), torch.zeros(3, 2))
    assert outputs_match(torch.tensor([1.0], dtype=torch.bfloat16), torch.tensor([1.0078125], dtype=torch.bfloat16))
    assert not outputs_match(torch.tensor([True]), torch.tensor([False]))
    assert outputs_match((torch.ones(1), "a"), (torch.ones(1), "a"))
    assert not outputs_match((torch.ones(1),), (torch.ones(1), torch.ones(1)))


def test_registering_an_exercise_and_unknown_names():
    def make_inputs(generator):
        return (torch.randn(exercises.randint(generator, 1, 4), generator=generator),)

    try:
        exercises.exercise("double_it_demo", make_inputs=make_inputs, reference=lambda x: 2 * x,
                           mistakes={"Did you add instead of multiply?": lambda x: x + 2}, trials=3)
        assert "double_it_demo" in list_exercises()
        assert check("double_it_demo", lambda x: x + x).message == "passed all 3 trials"
        assert check("double_it_demo", lambda x: x + 2).hint == "Did you add instead of multiply?"
    finally:
        checking._REGISTRY.pop("double_it_demo", None)
    with pytest.raises(KeyError, match="did you mean 'rms_norm'"):
        get_exercise("rms_nrom")
    with pytest.raises(ValueError):
        exercises.exercise("not a name", make_inputs=make_inputs, reference=abs)


def test_trial_inputs_are_repeatable_and_varied():
    registered = get_exercise("rms_norm")
    first, again = registered.inputs(0), registered.inputs(0)
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(first, again))
    dtypes = {registered.inputs(t)[0].dtype for t in range(registered.trials)}
    assert dtypes == {torch.float32, torch.bfloat16}
    shapes = {tuple(registered.inputs(t)[0].shape) for t in range(registered.trials)}
    assert len(shapes) > 1


def test_list_exercises_by_notebook():
    assert list_exercises("02_embeddings_and_rmsnorm") == ["embed", "rms_norm"]
    assert list_exercises("07") == ["top_k_filter", "top_p_filter", "decode_step"]


def test_fill_in_solutions_replaces_exercise_cells():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("def rms_norm(x, weight, eps):\n    raise NotImplementedError",
                                  metadata={"tags": ["exercise"], "exercise": "rms_norm"}),
        nbformat.v4.new_code_cell("check('rms_norm', rms_norm)"),
    ]
    assert fill_in_solutions(nb) == 1
    assert nb.cells[0].source == str(solution("rms_norm"))
    assert "NotImplementedError" not in nb.cells[0].source
    nb.cells[1].metadata["tags"] = ["exercise"]
    with pytest.raises(ValueError, match="no metadata 'exercise'"):
        fill_in_solutions(nb)


def lesson_modules():
    """Every ``gemma_lab/exercises/lesson<NN>_<notebook>.py``, imported."""
    folder = ROOT / "gemma_lab" / "exercises"
    return [importlib.import_module(f"gemma_lab.exercises.{path.stem}")
            for path in sorted(folder.glob(f"{checking.LESSON_PREFIX}*.py"))]


def test_one_exercise_file_per_lesson_named_after_its_notebook():
    modules = lesson_modules()
    lessons = [p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) if not p.name.startswith("00_")]
    assert len(modules) == len(lessons)  # every lesson but the tour (00, no exercises) has its file
    for module in modules:
        stem = module.__name__.rsplit(".", 1)[1][len(checking.LESSON_PREFIX):]
        assert module.NOTEBOOK == stem and (ROOT / "notebooks" / f"{stem}.ipynb").is_file()
        mine = list_exercises(stem)
        assert mine and all(get_exercise(name).reference.__module__ == module.__name__ for name in mine)
    assert sorted(name for module in modules for name in list_exercises(module.NOTEBOOK)) == sorted(NAMES)


def test_every_exercise_has_a_tagged_cell_in_its_notebook():
    for name in NAMES:
        notebook = ROOT / "notebooks" / f"{get_exercise(name).notebook}.ipynb"
        nb = nbformat.read(notebook, as_version=4)
        tagged = [cell for cell in nb.cells if "exercise" in cell.metadata.get("tags", [])
                  and cell.metadata.get("exercise") == name]
        assert len(tagged) == 1, f"{notebook.name} should have one exercise cell for {name!r}"
        assert "raise NotImplementedError" in tagged[0].source


# ---- the written-out versions behind the mistakes equal the package ---------------------------


@pytest.mark.parametrize("trial", range(6))
def test_written_out_forward_equals_the_model(trial):
    model, tokens = get_exercise("gemma_forward").inputs(trial)
    with torch.no_grad():
        torch.testing.assert_close(lesson06_full_forward_pass._gemma_forward(model, tokens), model(tokens))


@pytest.mark.parametrize("trial", range(6))
def test_written_out_attention_equals_the_package(trial):
    attn, x, positions = get_exercise("attention_layer").inputs(trial)
    with torch.no_grad():
        torch.testing.assert_close(lesson06_full_forward_pass._attention_layer(attn, x, positions),
                                   lesson06_full_forward_pass.attention_layer(attn, x, positions))
    q, k, v, allowed, scalar, softcap = get_exercise("grouped_attention").inputs(trial)
    torch.testing.assert_close(_grouped(q, k, v, allowed, scalar ** -0.5, softcap),
                               lesson04_attention.grouped_attention(q, k, v, allowed, scalar, softcap),
                               rtol=1.6e-2, atol=1e-2)


def test_embed_reference_is_what_the_model_computes():
    model, tokens = get_exercise("gemma_forward").inputs(0)
    for dtype in (torch.float32, torch.bfloat16):
        model = model.to(dtype)
        _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
        assert torch.equal(lesson02_embeddings_and_rmsnorm.embed(tokens, model.embed.weight), cache["hook_embed"])


def test_decode_pieces_reference_equals_the_tokenizer(tmp_path):
    from gemma_lab.tiny.corpus import generate_corpus
    from gemma_lab.tiny.tokenizer_training import train_tokenizer
    from gemma_lab.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(train_tokenizer(generate_corpus(seed=0, n_documents=200), tmp_path, vocab_size=600))
    for text in ["When Mary and John went to the store", " leading space", "naïve café 生活 🦙 ꙮ",
                 "<start_of_turn>user\nhi<end_of_turn>\n", "a  b\n\nc 1234"]:
        ids = tokenizer.encode(text) + [tokenizer.eos_id]
        pieces = [tokenizer.id_to_piece(i) for i in ids]
        assert lesson01_tokenization.decode_pieces(pieces) == tokenizer.decode(ids)


def test_a_function_that_never_returns_is_stopped(monkeypatch):

    monkeypatch.setattr(checking, "CHECK_TIME_LIMIT_S", 1)

    def forever(x, weight, eps):
        while True:
            pass

    result = check("rms_norm", forever)
    assert result.status == ERROR and "did not return" in result.message


def test_global_torch_state_changed_by_the_learner_is_restored():
    grad_before = torch.is_grad_enabled()

    def leaky(x, weight, eps):
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(not grad_before)
        return lesson02_embeddings_and_rmsnorm.rms_norm(x, weight, eps)

    check("rms_norm", leaky)
    assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled() == grad_before


@pytest.mark.parametrize("call", [lambda: check(None, print),
                                  lambda: check("rms_norm", lambda x, w, e: torch.empty(x.shape, device="meta"))])
def test_failures_inside_check_itself_are_messages(call):
    result = call()
    assert result.status == ERROR and result.message


def test_a_steering_hook_that_returns_the_wrong_dtype_gets_a_hint():
    """The bfloat16 trial of steered_generate gives a float32 direction: adding it unconverted promotes the
    stream, which the hook point refuses; the learner is told to convert the vector."""
    from gemma_lab.generation import generate

    def unconverted(model, prompt_ids, direction, layer, coeff, start, max_new_tokens):
        def add_direction(resid, hook):
            return resid + (hook.positions >= start)[..., None] * coeff * direction

        with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", add_direction)]):
            return generate(model, prompt_ids, max_new_tokens=max_new_tokens, stop=[]).token_ids

    result = check("steered_generate", unconverted)
    assert result.status == ERROR and "returned a torch.float32 tensor" in result.message
    assert "vector.to(resid.device, resid.dtype)" in result.hint
